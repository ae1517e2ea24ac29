"""Running a model over a batch: the bulkhead call, error classes, bisection, and
per-row post-validation. No ladder state here; the model tiers decide what
happens to the rows that come back failed.

Bisection budget: isolating one poison row among n costs at most 2*ceil(log2 n)+1
calls (the whole batch, then both halves at each level down to the row), so a
batch gets `max_poison_rows` times that (`bisect_budget`).
"""

from __future__ import annotations

import math
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
BATCH_WIDE: Final = frozenset({"timeout", "bulkhead_full", "oom", "cuda_error"})


def classify_error(exc: BaseException) -> str:
    if isinstance(exc, CallTimeout):
        return "timeout"
    if isinstance(exc, BulkheadFull):
        return "bulkhead_full"
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "oom"
    message = str(exc)
    if "out of memory" in message.lower():
        return "oom"
    if "CUDA error" in message or "CUDA-capable" in message or "cuDNN error" in message:
        return "cuda_error"
    return "exception"


@dataclass(slots=True)
class ModelRun:
    """Rows (positions into the model's input) answered, and why the others were not."""

    probs: npt.NDArray[np.float64]  # NaN where not answered
    failures: list[tuple[IntArray, str]] = field(default_factory=list)
    verdict: Verdict = "none"  # what the dependency's breaker should hear
    calls: int = 0


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


def run_model(model: Model, x: FloatMatrix, executor: Executor, deadline: Deadline,
              max_calls: int) -> ModelRun:
    """One call for the batch; if it raises (not a timeout or device fault) and
    budget remains (`max_calls` in all), bisect to isolate the poison rows and
    score the rest."""
    run = ModelRun(probs=np.full(len(x), np.nan))
    stack: list[IntArray] = [np.arange(len(x))]
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
