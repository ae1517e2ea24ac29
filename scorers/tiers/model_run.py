"""Running a model over a batch: the bulkhead call, error classes, bisection, and
per-row post-validation. No ladder state here; the model tiers decide what
happens to the rows that come back failed.

Device errors are classified by type (`classify_error`): `torch.OutOfMemoryError` is
"oom" (recoverable: the batch moves down, the tier splits its next calls);
`torch.AcceleratorError` / `torch.cuda.CudaError` are "cuda_sticky" when their CUDA
error code (attribute `error_code` or the "(N)" CudaError appends; else the message of
the typed error) is one that poisons the context (illegal address, device-side assert,
launch failure, ...), otherwise "cuda_error". Message text alone decides only for a
plain RuntimeError, i.e. on a torch without those types, and never makes it sticky
unless `AcceleratorError` does not exist in this torch.

Bisection budget: isolating one poison row among n costs at most 2*ceil(log2 n)+1
calls (the whole batch, then both halves at each level down to the row), so a
batch gets `max_poison_rows` times that (`bisect_budget`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import torch

from scorers.deadline import Deadline
from scorers.executor import BulkheadFull, CallTimeout, Executor
from scorers.ports import FloatMatrix, FloatVector, Model

IntArray = npt.NDArray[np.intp]
Verdict = Literal["success", "failure", "none"]
# Failures that say nothing about individual rows: the whole batch moves down at once.
BATCH_WIDE: Final = frozenset({"timeout", "bulkhead_full", "oom", "cuda_error", "cuda_sticky"})

# The worker's exit code when the CUDA context is lost: its supervisor restarts it.
EXIT_CUDA_CONTEXT_LOST: Final = 4
# torch's device-error types where this torch has them (2.8+: AcceleratorError).
_ACCELERATOR_ERROR: Final[type[BaseException] | None] = getattr(torch, "AcceleratorError", None)
_CUDA_ERROR: Final[type[BaseException] | None] = getattr(torch.cuda, "CudaError", None)
DEVICE_ERROR_TYPES: Final = tuple(t for t in (_ACCELERATOR_ERROR, _CUDA_ERROR) if t is not None)
# cudaError_t codes after which the context is unusable for the rest of the process.
STICKY_CUDA_CODES: Final = frozenset({
    700,  # cudaErrorIllegalAddress
    702,  # cudaErrorLaunchTimeout
    709,  # cudaErrorContextIsDestroyed
    710,  # cudaErrorAssert (device-side assert)
    714,  # cudaErrorHardwareStackError
    715,  # cudaErrorIllegalInstruction
    716,  # cudaErrorMisalignedAddress
    717,  # cudaErrorInvalidAddressSpace
    718,  # cudaErrorInvalidPc
    719,  # cudaErrorLaunchFailure
    720,  # cudaErrorCooperativeLaunchTooLarge
    999,  # cudaErrorUnknown
})
OOM_CUDA_CODES: Final = frozenset({2})  # cudaErrorMemoryAllocation
STICKY_MESSAGES: Final = ("illegal memory access", "device-side assert", "unspecified launch failure",
                          "misaligned address", "illegal instruction", "an illegal address",
                          "hardware stack error", "launch timed out")


class CudaContextLost(RuntimeError):
    """A sticky device error: every later CUDA call in this process fails. The tier
    records one (`PrimaryTier.fatal`); the worker exits with `exit_code`."""

    exit_code: Final = EXIT_CUDA_CONTEXT_LOST


def cuda_error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "error_code", None)
    if isinstance(code, int):
        return code
    if _CUDA_ERROR is not None and isinstance(exc, _CUDA_ERROR):
        found = re.search(r"\((\d+)\)\s*$", str(exc))  # CudaError: "<cudaGetErrorString> (N)"
        return int(found.group(1)) if found else None
    return None


def _sticky_text(message: str) -> bool:
    lowered = message.lower()
    return any(m in lowered for m in STICKY_MESSAGES)


def classify_error(exc: BaseException) -> str:
    """timeout, bulkhead_full, oom, cuda_sticky, cuda_error or exception."""
    if isinstance(exc, CallTimeout):
        return "timeout"
    if isinstance(exc, BulkheadFull):
        return "bulkhead_full"
    if isinstance(exc, torch.OutOfMemoryError):
        return "oom"
    if DEVICE_ERROR_TYPES and isinstance(exc, DEVICE_ERROR_TYPES):
        code = cuda_error_code(exc)
        if code is not None:
            return ("oom" if code in OOM_CUDA_CODES
                    else "cuda_sticky" if code in STICKY_CUDA_CODES else "cuda_error")
        return "cuda_sticky" if _sticky_text(str(exc)) else "cuda_error"
    message = str(exc)
    if "out of memory" in message.lower():
        return "oom"
    if "CUDA error" in message or "CUDA-capable" in message or "cuDNN error" in message:
        # Text only: a torch without AcceleratorError reports device faults as plain
        # RuntimeErrors; with it, an untyped "CUDA error" is not a poisoned context.
        return "cuda_sticky" if _ACCELERATOR_ERROR is None and _sticky_text(message) \
            else "cuda_error"
    return "exception"


@dataclass(slots=True)
class ModelRun:
    """Rows (positions into the model's input) answered, and why the others were not."""

    probs: npt.NDArray[np.float64]  # NaN where not answered
    failures: list[tuple[IntArray, str]] = field(default_factory=list)
    verdict: Verdict = "none"  # what the dependency's breaker should hear
    calls: int = 0
    oom_rows: int = 0  # rows of the call that ran out of device memory (0: none did)
    sticky: BaseException | None = None  # a device error that poisoned the CUDA context


def _checked_predict(model: Model, x: FloatMatrix) -> Callable[[], FloatVector]:
    def run() -> FloatVector:
        out = np.asarray(model.predict(x))
        if out.shape != (len(x),):
            raise ValueError(f"model returned shape {out.shape} for {len(x)} rows")
        return out

    return run


def bisect_budget(n: int, max_poison_rows: int) -> int:
    """Model calls one batch of `n` rows may spend (at least the one whole-batch call)."""
    per_row = 2 * math.ceil(math.log2(n)) + 1 if n > 1 else 1
    return max(1, max_poison_rows * per_row)


def chunks(n: int, max_rows: int | None) -> list[IntArray]:
    """Positions 0..n-1 in calls of at most `max_rows` rows (one call when None)."""
    if max_rows is None or max_rows <= 0 or n <= max_rows:
        return [np.arange(n)]
    return [np.arange(i, min(i + max_rows, n)) for i in range(0, n, max_rows)]


def run_model(model: Model, x: FloatMatrix, executor: Executor, deadline: Deadline,
              max_calls: int, max_rows: int | None = None) -> ModelRun:
    """One call for the batch (or one per `max_rows` rows, after an out-of-memory);
    if one raises (not a timeout or device fault) and budget remains (`max_calls` in
    all, plus one per extra chunk), bisect to isolate the poison rows and score the rest."""
    run = ModelRun(probs=np.full(len(x), np.nan))
    stack: list[IntArray] = chunks(len(x), max_rows)[::-1]  # popped in order
    max_calls += len(stack) - 1
    any_ok = False
    device_fault = False
    while stack:
        part = stack.pop()
        if run.calls >= max_calls or deadline.expired():
            run.failures.append((part, "timeout" if deadline.expired() else "exception"))
            continue
        run.calls += 1
        try:
            out = executor.call(_checked_predict(model, x[part]), deadline.remaining())
        except Exception as exc:  # noqa: BLE001 - every model failure is classified
            kind = classify_error(exc)
            if kind == "oom" and not run.oom_rows:
                run.oom_rows = len(part)
            elif kind == "cuda_sticky" and run.sticky is None:
                run.sticky = exc
            if kind in BATCH_WIDE:
                # A full bulkhead means earlier calls still hang: that is the
                # dependency's fault too, so the breaker hears it and opens.
                device_fault = True
                run.failures.append((part, kind))
                run.failures.extend((rest, kind) for rest in stack)
                stack.clear()
            elif len(part) == 1:
                run.failures.append((part, "poison" if run.calls > 1 else "exception"))
            else:
                half = len(part) // 2
                stack.extend((part[half:], part[:half]))
            continue
        run.probs[part] = out
        any_ok = True
    if device_fault or (not any_ok and run.failures):
        run.verdict = "failure"
    elif any_ok:
        run.verdict = "success"
    return run


def post_validate(probs: npt.NDArray[np.float64], confidence: npt.NDArray[np.float64],
                  min_confidence: float) -> tuple[npt.NDArray[np.bool_], list[tuple[IntArray, str]]]:
    """Mask of usable rows, and the unusable ones grouped by reason."""
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(probs)
        in_range = finite & (probs >= 0.0) & (probs <= 1.0)
        confident = in_range & (confidence >= min_confidence)
    bad: list[tuple[IntArray, str]] = []
    for mask, reason in ((~finite, "nan"), (finite & ~in_range, "out_of_range"),
                         (in_range & ~confident, "low_confidence")):
        rows = np.flatnonzero(mask)
        if rows.size:
            bad.append((rows, reason))
    return confident, bad
