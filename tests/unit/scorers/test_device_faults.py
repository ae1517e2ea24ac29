"""CUDA failure modes on CPU: classification by type (real torch exception types),
out-of-memory → the batch moves down and the next calls are split, a sticky error →
the tier records `CudaContextLost` and the runner's watch stops the worker with
`EXIT_CUDA_CONTEXT_LOST`; pinned staging is a no-op on CPU."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ladder_fakes import PRIMARY_NAMES, FnModel, build, make_tx, write_model_dir

import scorers.tiers.model_run as model_run
from scorers.breaker import State
from scorers.clock import FakeClock
from scorers.deadline import Deadline
from scorers.executor import BulkheadFull, CallTimeout
from scorers.faults import CUDA_ERROR_MESSAGE
from scorers.models.torch_model import TorchModel
from scorers.tiers.model_run import chunks, classify_error
from scorers.tiers.primary import (
    EXIT_CUDA_CONTEXT_LOST,
    CudaContextLost,
    PrimaryTier,
    fatal_error,
)
from topics.schemas import Tier

ACCELERATOR = getattr(torch, "AcceleratorError", None)
needs_accelerator_error = pytest.mark.skipif(ACCELERATOR is None,
                                             reason="torch has no AcceleratorError")


def accelerator_error(message: str, code: int | None = None) -> BaseException:
    assert ACCELERATOR is not None
    exc: BaseException = ACCELERATOR(message)
    if code is not None:
        exc.error_code = code  # type: ignore[attr-defined]
    return exc


def test_classification_of_non_device_errors() -> None:
    assert classify_error(CallTimeout("x")) == "timeout"
    assert classify_error(BulkheadFull("x")) == "bulkhead_full"
    assert classify_error(ValueError("bad row")) == "exception"
    assert classify_error(torch.OutOfMemoryError("CUDA out of memory.")) == "oom"
    assert classify_error(torch.cuda.OutOfMemoryError("CUDA out of memory.")) == "oom"


@needs_accelerator_error
@pytest.mark.parametrize(("message", "code", "kind"), [
    ("CUDA error: an illegal memory access was encountered", None, "cuda_sticky"),
    ("CUDA error: device-side assert triggered", None, "cuda_sticky"),
    ("CUDA error: unspecified launch failure", None, "cuda_sticky"),
    ("CUDA error: invalid device ordinal", None, "cuda_error"),
    ("whatever the text", 700, "cuda_sticky"),  # cudaErrorIllegalAddress
    ("whatever the text", 710, "cuda_sticky"),  # cudaErrorAssert
    ("whatever the text", 719, "cuda_sticky"),  # cudaErrorLaunchFailure
    ("whatever the text", 2, "oom"),  # cudaErrorMemoryAllocation
    ("an illegal memory access", 101, "cuda_error"),  # the code wins over the text
])
def test_accelerator_errors_are_classified_by_type_and_code(message: str, code: int | None,
                                                            kind: str) -> None:
    assert classify_error(accelerator_error(message, code)) == kind


def test_cuda_error_type_uses_its_code() -> None:
    try:
        exc = torch.cuda.CudaError(700)
    except Exception:  # noqa: BLE001 - needs the CUDA runtime's error strings
        pytest.skip("torch.cuda.CudaError is not constructible without the CUDA runtime")
    assert classify_error(exc) == "cuda_sticky"


def test_untyped_cuda_text_is_never_sticky_when_the_type_exists(
        monkeypatch: pytest.MonkeyPatch) -> None:
    text = RuntimeError("CUDA error: an illegal memory access was encountered")
    if ACCELERATOR is not None:
        assert classify_error(text) == "cuda_error"
    monkeypatch.setattr(model_run, "_ACCELERATOR_ERROR", None)  # an older torch
    monkeypatch.setattr(model_run, "DEVICE_ERROR_TYPES", ())
    assert classify_error(text) == "cuda_sticky"
    assert classify_error(RuntimeError(CUDA_ERROR_MESSAGE)) == "cuda_error"  # the injected one
    assert classify_error(RuntimeError("CUDA out of memory. Tried")) == "oom"


def test_chunks() -> None:
    assert [len(c) for c in chunks(10, None)] == [10]
    assert [len(c) for c in chunks(10, 4)] == [4, 4, 2]
    assert np.concatenate(chunks(10, 3)).tolist() == list(range(10))


def score(ladder: Any, clock: FakeClock, start: int, n: int = 64) -> list[Tier]:
    txs = [make_tx(start + i) for i in range(n)]
    return [s.tier for s in ladder.score_batch(txs, Deadline(clock, clock.monotonic() + 1.0))]


def primary_tier(ladder: Any) -> PrimaryTier:
    tier = ladder.tier("primary")
    assert isinstance(tier, PrimaryTier)
    return tier


def test_oom_moves_the_batch_down_then_splits_and_doubles_back() -> None:
    limit = {"rows": 40}

    def fn(x: np.ndarray) -> np.ndarray:
        if len(x) > limit["rows"]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return np.full(len(x), 0.01)

    clock = FakeClock()
    model = FnModel("p-1", PRIMARY_NAMES, fn)
    ladder = build(clock, primary=model)
    tier = primary_tier(ladder)
    assert set(score(ladder, clock, 0)) == {Tier.FALLBACK}  # the OOM batch moves down
    assert model.calls == [64] and tier.max_rows == 32
    model.calls.clear()
    assert set(score(ladder, clock, 100)) == {Tier.PRIMARY}  # split in halves: fits
    assert model.calls == [32, 32]
    assert tier.max_rows is None  # doubled back to the size that ran out: lifted
    limit["rows"] = 10
    model.calls.clear()
    assert set(score(ladder, clock, 200)) == {Tier.FALLBACK}
    assert model.calls == [64] and tier.max_rows == 32
    model.calls.clear()
    score(ladder, clock, 300)
    assert model.calls == [32] and tier.max_rows == 16  # the first half ran out: halve again
    assert fatal_error(ladder) is None
    assert ladder.breakers["primary"].state is State.CLOSED  # below minimum_calls


@needs_accelerator_error
def test_a_sticky_error_records_the_fatal_fault_and_stops_device_calls() -> None:
    def fn(x: np.ndarray) -> np.ndarray:
        raise accelerator_error("CUDA error: an illegal memory access was encountered")

    clock = FakeClock()
    model = FnModel("p-1", PRIMARY_NAMES, fn)
    ladder = build(clock, primary=model)
    assert set(score(ladder, clock, 0)) == {Tier.FALLBACK}  # the batch is still answered
    lost = fatal_error(ladder)
    assert isinstance(lost, CudaContextLost) and lost.exit_code == EXIT_CUDA_CONTEXT_LOST == 4
    assert "illegal memory access" in str(lost)
    breaker = ladder.breakers["primary"]
    assert breaker.state is State.FORCED_OPEN and breaker.reason == "cuda_context_lost"
    assert model.calls == [64]  # no bisection of a device fault
    assert set(score(ladder, clock, 100)) == {Tier.FALLBACK}
    assert model.calls == [64]  # no more calls into the poisoned context


def test_the_runner_watch_stops_the_worker_and_exits_hard_if_it_hangs() -> None:
    from stream_app.live.runner import FatalWatch

    class Ladderish:
        def __init__(self) -> None:
            self.tiers = [type("T", (), {"fatal": None})()]

    ladder = Ladderish()
    stopped, exits = threading.Event(), []
    watch = FatalWatch(ladder, stopped.set, every_s=0.005, hard_exit_after_s=0.05,
                       hard_exit=exits.append).start()
    assert not stopped.wait(0.05)
    ladder.tiers[0].fatal = CudaContextLost("primary: illegal memory access")  # type: ignore[attr-defined]
    assert stopped.wait(5.0)
    watch._thread.join(5.0)
    assert exits == [EXIT_CUDA_CONTEXT_LOST] and watch.lost is not None

    graceful = Ladderish()
    graceful.tiers[0].fatal = CudaContextLost("x")  # type: ignore[attr-defined]
    stopped2, exits2 = threading.Event(), []
    watch2 = FatalWatch(graceful, stopped2.set, every_s=0.005, hard_exit_after_s=5.0,
                        hard_exit=exits2.append).start()
    assert stopped2.wait(5.0)
    watch2.stop()  # the worker returned in time
    watch2._thread.join(5.0)
    assert exits2 == []


def test_pinned_staging_is_a_no_op_on_cpu(tmp_path: Path) -> None:
    model = TorchModel.load(write_model_dir(tmp_path / "p", PRIMARY_NAMES), device="cpu")
    assert not model.pin_host_buffers
    out = model.predict(np.ones((5, len(PRIMARY_NAMES)), dtype=np.float64))
    assert out.shape == (5,) and model.pinned_buffers == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pinned_staging_reuses_one_buffer_per_batch_size(tmp_path: Path) -> None:
    model = TorchModel.load(write_model_dir(tmp_path / "p", PRIMARY_NAMES), device="cuda")
    x = np.random.default_rng(0).standard_normal((7, len(PRIMARY_NAMES))).astype(np.float32)
    first = model.predict(x)
    np.testing.assert_allclose(model.predict(x), first, rtol=1e-6)
    assert model.pinned_buffers == 1
    model.pin_host_buffers = False
    np.testing.assert_allclose(model.predict(x), first, rtol=1e-6)
