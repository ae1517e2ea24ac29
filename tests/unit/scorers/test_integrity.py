"""Run-time integrity of in-memory weights: the checksum taken at load, the checker on a
fake clock (found within one interval, breaker forced open, restored → reset), and the
real background thread, which never runs on the scoring thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from ladder_fakes import EVENT_NAMES, PRIMARY_NAMES, build, make_tx, write_model_dir

import scorers.models.integrity as integrity
from scorers.breaker import CircuitBreaker, State
from scorers.clock import FakeClock, SystemClock
from scorers.config import BreakerConfig, LadderConfig
from scorers.deadline import Deadline
from scorers.faults import WeightGuard
from scorers.models.integrity import (
    INTEGRITY_REASON,
    IntegrityChecker,
    target_of,
    weights_checksum,
)
from scorers.models.torch_model import TorchModel
from topics.schemas import Tier


@pytest.fixture
def model(tmp_path: Path) -> TorchModel:
    return TorchModel.load(write_model_dir(tmp_path / "p", PRIMARY_NAMES), device="cpu")


def checker_for(model: TorchModel, clock: FakeClock, interval_s: float = 30.0,
                failures: list[str] | None = None) -> tuple[IntegrityChecker, CircuitBreaker]:
    breaker = CircuitBreaker("primary", BreakerConfig(), clock)
    target = target_of("primary", model, breaker)
    assert target is not None
    hook = failures.append if failures is not None else None
    return IntegrityChecker([target], interval_s, clock, hook), breaker


def test_checksum_is_taken_at_load_and_changes_with_the_weights(model: TorchModel) -> None:
    assert model.weights_checksum == weights_checksum(model._net)
    guard = WeightGuard(model)
    guard.corrupt()
    assert weights_checksum(model._net) != model.weights_checksum
    guard.restore()
    assert weights_checksum(model._net) == model.weights_checksum


def test_corruption_is_found_within_one_interval_and_a_restore_resets(model: TorchModel) -> None:
    clock, failures = FakeClock(), []
    checker, breaker = checker_for(model, clock, failures=failures)
    guard = WeightGuard(model)
    guard.corrupt()
    clock.advance(29.9)
    assert not checker.run_pending() and breaker.state is State.CLOSED  # not due yet
    clock.advance(0.1)
    assert checker.run_pending()
    assert breaker.state is State.FORCED_OPEN and breaker.reason == INTEGRITY_REASON
    assert failures == ["primary"] and checker.failures == {"primary": 1}
    clock.advance(30.0)
    assert checker.run_pending() and failures == ["primary", "primary"]  # counted per check
    assert breaker.state is State.FORCED_OPEN
    guard.restore()
    clock.advance(30.0)
    assert checker.run_pending()
    assert breaker.state is State.CLOSED and breaker.reason == ""
    assert len(failures) == 2


def test_a_breaker_forced_open_for_another_reason_is_left_alone(model: TorchModel) -> None:
    clock = FakeClock()
    checker, breaker = checker_for(model, clock)
    breaker.force_open("cuda_context_lost")
    assert checker.check_now() == {"primary": True}
    assert breaker.state is State.FORCED_OPEN and breaker.reason == "cuda_context_lost"


def test_a_checksum_that_cannot_be_taken_is_no_verdict(model: TorchModel,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    checker, breaker = checker_for(model, clock)

    def broken(_m: torch.nn.Module) -> int:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(integrity, "weights_checksum", broken)
    assert checker.check_now() == {"primary": None}
    assert breaker.state is State.CLOSED


def test_interval_zero_is_refused_by_the_checker_and_allowed_in_config() -> None:
    assert LadderConfig(integrity_check_interval_s=0).integrity_check_interval_s == 0
    with pytest.raises(ValueError):
        LadderConfig(integrity_check_interval_s=-1)
    with pytest.raises(ValueError):
        IntegrityChecker([], 0, FakeClock())


def test_the_background_thread_finds_a_corruption(model: TorchModel) -> None:
    breaker = CircuitBreaker("primary", BreakerConfig(), SystemClock())
    target = target_of("primary", model, breaker)
    assert target is not None
    checker = IntegrityChecker([target], 0.02, SystemClock()).start()
    try:
        assert checker.running
        guard = WeightGuard(model)
        guard.corrupt()
        t_end = time.monotonic() + 5.0
        while breaker.state is not State.FORCED_OPEN and time.monotonic() < t_end:
            time.sleep(0.01)
        assert breaker.reason == INTEGRITY_REASON
        guard.restore()
        while breaker.state is not State.CLOSED and time.monotonic() < t_end:
            time.sleep(0.01)
        assert breaker.state is State.CLOSED
    finally:
        checker.stop()
    assert not checker.running


def test_checking_costs_nothing_on_the_scoring_thread(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Wiring's checker over a ladder of real torch models: scoring never computes a
    checksum; the checker's thread does, and opens the breaker the ladder then honours."""
    from stream_app.wiring import integrity_checker, start_integrity, stop_integrity

    seen: list[str] = []
    real = integrity.weights_checksum

    def spy(module: torch.nn.Module) -> int:
        seen.append(threading.current_thread().name)
        return real(module)

    clock = FakeClock()
    primary = TorchModel.load(write_model_dir(tmp_path / "p", PRIMARY_NAMES), device="cpu")
    fallback = TorchModel.load(write_model_dir(tmp_path / "f", EVENT_NAMES, version="f-1"),
                               device="cpu")
    ladder = build(clock, primary=primary, fallback=fallback,
                   config=LadderConfig(fallback_reserve_s=0.005, primary_min_confidence=0.0,
                                       fallback_min_confidence=0.0))
    monkeypatch.setattr(integrity, "weights_checksum", spy)
    checker = start_integrity(ladder, 30.0, clock)
    try:
        assert checker is not None and integrity_checker(ladder) is checker
        assert [t.tier for t in checker.targets] == ["primary", "fallback"]
        for i in range(5):
            scores = ladder.score_batch([make_tx(i * 10 + j) for j in range(10)],
                                        Deadline(clock, clock.monotonic() + 1.0))
            assert {s.tier for s in scores} == {Tier.PRIMARY}
        assert seen == []  # nothing on the scoring thread
        WeightGuard(primary).corrupt()
        clock.advance(30.0)  # the thread wakes on the real clock's wait; drive it here
        checker.run_pending()
        assert seen  # the check itself ran (here on the test's thread, driven by hand)
        scores = ladder.score_batch([make_tx(100 + j) for j in range(10)],
                                    Deadline(clock, clock.monotonic() + 1.0))
        assert {s.tier for s in scores} == {Tier.FALLBACK}
    finally:
        stop_integrity(ladder)
        ladder.close()
    assert integrity_checker(ladder) is None
