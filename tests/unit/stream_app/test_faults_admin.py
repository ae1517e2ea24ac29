"""The fault switchboard over a real (tiny) ladder and the /admin/faults endpoint.
Fake clock, inline executor, in-memory cache and feature store: no broker, no sleeps."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from scorers.cache import InMemoryPredictionCache
from scorers.clock import FakeClock
from scorers.config import CacheConfig, LadderConfig
from scorers.deadline import Deadline
from scorers.executor import InlineExecutor
from scorers.faults import DependencySwitch, DeviceFaultyModel, WeightGuard
from scorers.feature_store import InMemoryFeatureStore
from scorers.features import EVENT_FEATURE_NAMES, PRIMARY_FEATURE_NAMES, event_features
from scorers.ladder import Ladder
from scorers.models.integrity import IntegrityChecker, target_of
from scorers.models.manifest import Manifest, Thresholds
from scorers.models.nets import build_net
from scorers.models.torch_model import TorchModel
from scorers.ports import Model
from scorers.standard import standard_ladder
from stream_app.http import MetricsServer
from stream_app.metrics import Metrics
from stream_app.ops.faults_admin import (
    INTEGRITY_REASON,
    FaultSpecError,
    FaultWrappers,
    Switchboard,
    parse_faults,
)
from topics.schemas import Tier, Transaction


def tiny_model(name: str, names: tuple[str, ...], seed: int) -> TorchModel:
    torch.manual_seed(seed)
    arch: dict[str, Any] = {"type": "mlp", "n_in": len(names), "hidden": [8]}
    net = build_net(arch).eval()
    manifest = Manifest(name=name, version=f"{name}-1", weights_file="w.pt", sha256="0" * 64,
                        feature_names=names, arch=arch,
                        thresholds=Thresholds(review=0.5, block=0.9))
    return TorchModel(net, manifest, torch.device("cpu"))


def txs(n: int, start: int = 0) -> list[Transaction]:
    return [Transaction(transaction_id=f"tx-{i}", event_time_s=1_750_000_000.0 + i,
                        customer_id=f"c{i % 7}", terminal_id=f"t{i % 5}", amount=float(10 + i),
                        currency="EUR", merchant_category="5411", is_international=False,
                        has_international_history=True, account_age_days=400, channel="pos")
            for i in range(start, start + n)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class FrozenFeatureStore(InMemoryFeatureStore):
    """Online features that do not move: the cache keys on the primary's whole input
    (event + online features), so a record scored again is a hit only while they stay."""

    def update(self, txs: Sequence[Transaction], timeout_s: float) -> None:
        return None


@pytest.fixture
def wired(clock: FakeClock) -> Iterator[tuple[Ladder, Switchboard, Model]]:
    """Dependencies wrapped in fault switches before the ladder is built, as wiring does."""
    config = LadderConfig(primary_min_confidence=0.0, fallback_min_confidence=0.0,
                          cache=CacheConfig(enabled=True))
    wrappers = FaultWrappers()
    primary = wrappers.model(tiny_model("primary", PRIMARY_FEATURE_NAMES, 1))
    built = standard_ladder(
        config, primary=primary, fallback=tiny_model("fallback", EVENT_FEATURE_NAMES, 2),
        event_features=event_features,
        cache=wrappers.cache(InMemoryPredictionCache(config.cache, clock)),
        feature_store=wrappers.feature_store(FrozenFeatureStore()), clock=clock,
        executor=InlineExecutor(clock))
    yield built, wrappers.switchboard(built.breakers), primary
    built.close()


@pytest.fixture
def ladder(wired: tuple[Ladder, Switchboard, Model]) -> Ladder:
    return wired[0]


@pytest.fixture
def board(wired: tuple[Ladder, Switchboard, Model]) -> Switchboard:
    return wired[1]


@pytest.fixture
def primary(wired: tuple[Ladder, Switchboard, Model]) -> Model:
    return wired[2]


def score(ladder: Ladder, clock: FakeClock, batch: list[Transaction]) -> list[Tier]:
    return [s.tier for s in ladder.score_batch(batch, Deadline(clock, clock.monotonic() + 0.05))]


def test_off_by_default_wrappers_are_pass_through(ladder: Ladder, board: Switchboard,
                                                  clock: FakeClock, primary: Model) -> None:
    assert isinstance(primary, DeviceFaultyModel)
    assert set(score(ladder, clock, txs(20))) == {Tier.PRIMARY}
    assert set(score(ladder, clock, txs(20))) == {Tier.CACHE}  # written back, read again
    assert board.snapshot()["breakers"] == dict.fromkeys(
        ("primary", "fallback", "cache", "feature_store"), "closed")


@pytest.mark.parametrize("fault", [{"error": True}, {"cuda_error": True}, {"oom": True},
                                   {"nan_fraction": 1.0}])
def test_primary_faults_send_records_to_the_fallback_and_heal(
        ladder: Ladder, board: Switchboard, clock: FakeClock, fault: dict[str, Any]) -> None:
    board.apply({"primary": fault})
    assert set(score(ladder, clock, txs(30))) == {Tier.FALLBACK}
    board.heal()
    assert board.snapshot()["primary"]["error"] is False
    assert set(score(ladder, clock, txs(30, start=100))) == {Tier.PRIMARY}


def test_repeated_primary_errors_open_the_breaker(ladder: Ladder, board: Switchboard,
                                                  clock: FakeClock) -> None:
    board.apply({"primary": {"error": True}})
    for i in range(12):
        score(ladder, clock, txs(5, start=10 * i))
    assert board.snapshot()["breakers"]["primary"] == "open"


def test_cache_down_is_a_miss_and_the_primary_still_answers(
        ladder: Ladder, board: Switchboard, clock: FakeClock) -> None:
    score(ladder, clock, txs(10))
    board.apply({"cache": {"down": True}})
    assert set(score(ladder, clock, txs(10))) == {Tier.PRIMARY}
    board.heal()
    assert set(score(ladder, clock, txs(10))) == {Tier.CACHE}


def test_feature_store_down_or_slow_sends_records_to_the_fallback(
        ladder: Ladder, board: Switchboard, clock: FakeClock) -> None:
    board.apply({"feature_store": {"down": True}})
    assert set(score(ladder, clock, txs(10))) == {Tier.FALLBACK}
    board.apply({"feature_store": {"down": False, "latency_s": 5.0}})
    assert board.feature_store is not None
    board.feature_store.clear()  # the blocking wait is on an Event; clearing ends it
    assert set(score(ladder, clock, txs(10, start=50))) == {Tier.PRIMARY}


def test_dependency_latency_past_the_timeout_times_out_after_the_timeout() -> None:
    waited: list[float] = []
    switch = DependencySwitch("cache", sleep=waited.append)
    switch.set(latency_s=0.002)
    switch.before_call(0.01)  # slower, but within its budget: passes
    switch.set(latency_s=0.5)
    with pytest.raises(TimeoutError):
        switch.before_call(0.01)
    assert waited == [0.002, 0.01]


def test_corrupted_weights_are_found_by_the_integrity_checker_and_restore_exactly(
        ladder: Ladder, board: Switchboard, clock: FakeClock, primary: Model) -> None:
    """The switchboard only corrupts and restores; the run-time checker (as wiring
    starts it, driven here on the fake clock) opens and resets the breaker."""
    checker = IntegrityChecker([t for t in (target_of("primary", primary,
                                                      ladder.breakers["primary"]),)
                                if t is not None], 30.0, clock)
    x = np.asarray(event_features(txs(8)), dtype=np.float32)
    x = np.hstack([x, np.zeros((8, len(PRIMARY_FEATURE_NAMES) - x.shape[1]), np.float32)])
    before = primary.predict(x)
    board.apply({"primary": {"corrupt_weights": True}})
    assert board.guard is not None and not board.guard.intact()
    assert not np.allclose(primary.predict(x), before)
    breaker = ladder.breakers["primary"]
    assert breaker.state.value == "closed"  # the switchboard does not judge
    clock.advance(30.0)
    assert checker.run_pending()
    assert breaker.state.value == "forced_open" and breaker.reason == INTEGRITY_REASON
    assert set(score(ladder, clock, txs(10, start=300))) == {Tier.FALLBACK}
    board.heal()
    assert board.guard.intact() and breaker.state.value == "forced_open"
    clock.advance(30.0)
    assert checker.run_pending() and breaker.state.value == "closed"
    np.testing.assert_array_equal(primary.predict(x), before)
    assert set(score(ladder, clock, txs(10, start=400))) == {Tier.PRIMARY}


def test_weight_guard_refuses_a_model_without_a_torch_module() -> None:
    with pytest.raises(TypeError):
        WeightGuard(object())


@pytest.mark.parametrize("body", [
    [], {"gpu": {}}, {"primary": []}, {"primary": {"explode": True}},
    {"primary": {"error": 1}}, {"primary": {"latency_s": True}},
    {"primary": {"latency_s": "1"}}, {"primary": {"nan_fraction": 1.5}},
    {"primary": {"hang_s": -1}}, {"cache": {"latency_s": float("nan")}},
    {"feature_store": {"down": "yes"}},
])
def test_bad_bodies_are_refused(body: Any) -> None:
    with pytest.raises(FaultSpecError):
        parse_faults(body)


def test_a_bad_body_changes_nothing(board: Switchboard) -> None:
    before = board.snapshot()
    with pytest.raises(FaultSpecError):
        board.apply({"primary": {"error": True}, "cache": {"down": "no"}})
    assert board.snapshot() == before


def test_hang_flag_sets_a_bounded_interruptible_hang(board: Switchboard) -> None:
    state = board.apply({"primary": {"hang": True}})
    assert state["primary"]["hang_s"] > 0
    state = board.apply({"primary": {"hang": False}})
    assert state["primary"]["hang_s"] == 0.0


def request(url: str, method: str, body: object = None) -> tuple[int, Any]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw) if raw.startswith(b"{") else raw


def test_admin_endpoint_is_refused_when_faults_are_disabled() -> None:
    with MetricsServer(Metrics(), port=0) as srv:
        url = f"{srv.url}/admin/faults"
        for method, body in (("GET", None), ("POST", {"primary": {"error": True}}),
                             ("DELETE", None)):
            status, reply = request(url, method, body)
            assert status == 403 and "disabled" in reply["error"]


def test_admin_endpoint_switches_and_heals(board: Switchboard) -> None:
    with MetricsServer(Metrics(), port=0, faults=board) as srv:
        url = f"{srv.url}/admin/faults"
        status, state = request(url, "POST", {"primary": {"error": True},
                                              "cache": {"down": True}})
        assert status == 200 and state["primary"]["error"] and state["cache"]["down"]
        assert request(url, "GET")[1] == state
        assert request(url, "POST", b"{not json")[0] == 400
        status, reply = request(url, "POST", {"primary": {"boom": True}})
        assert status == 400 and "boom" in reply["error"]
        status, state = request(url, "DELETE")
        assert status == 200 and not state["primary"]["error"] and not state["cache"]["down"]
        assert request(f"{srv.url}/admin/other", "POST", {})[0] == 404


def test_on_cpu_device_faults_raise_the_cuda_error_type_and_message(board: Switchboard,
                                                                     primary: Model) -> None:
    from scorers.faults import CUDA_ERROR_MESSAGE, raise_device_error

    raise_device_error("oom", "cpu")  # no device: nothing to provoke
    x = np.zeros((2, len(PRIMARY_FEATURE_NAMES)), np.float32)
    board.apply({"primary": {"cuda_error": True}})
    with pytest.raises(RuntimeError, match=CUDA_ERROR_MESSAGE):
        primary.predict(x)
    board.apply({"primary": {"cuda_error": False, "oom": True}})
    with pytest.raises(torch.cuda.OutOfMemoryError):
        primary.predict(x)


def test_reliability_table_is_built_from_the_results_file() -> None:
    from tests.chaos.report import render

    doc = {"host": "h", "cpus": 2, "written_at_s": 0.0, "outcomes": [
        {"scenario": "s", "fault": "primary_error", "sent": 10, "scored": 9, "dead_lettered": 1,
         "lost": 0, "duplicated": 0, "tiers": {"fallback": 9}, "command": "make chaos",
         "notes": {"breaker_opened": 1}}]}
    table = render(doc)
    assert "| primary_error | 10 | 9 | 1 | 0 | 0 | fallback 9 | breaker opened: 1 |" in table
    assert "0 lost, 0 duplicated" in table
