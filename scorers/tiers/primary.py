"""The primary tier: the full model on event + online features, in a bulkhead.

It leaves `fallback_reserve_s` of the deadline to the tiers below, fetches the
online features once per batch through the batch view (under the `feature_store`
breaker), and calls the model under the `primary` breaker: poison rows are
isolated by bisection (bad input: no verdict), device faults and timeouts move
the whole batch down (a failure), NaN / out-of-range / low-confidence rows go
down alone.

Device faults (`model_run.classify_error`): an out-of-memory moves the batch down and
halves the rows per call (`max_rows`) for the next batches; each fully successful
batch doubles it back, and once it reaches the batch size that ran out it is lifted.
A sticky error (illegal memory access, device-side assert, launch failure) poisons
the process's CUDA context: the tier records `fatal` (a `CudaContextLost`), logs
`cuda_context_lost`, forces its breaker open (no more device calls) and the worker,
after the batch, exits with `EXIT_CUDA_CONTEXT_LOST` (`fatal_error(ladder)`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Final

import numpy as np

from scorers.batch_view import FEATURE_STORE, BatchView
from scorers.breakers import Verdict
from scorers.executor import Executor
from scorers.models.manifest import Thresholds
from scorers.outcome import model_confidence
from scorers.ports import Model
from scorers.tier import DEFAULT_THRESHOLDS, BaseTier, IntArray, TierContext, TierResult
from scorers.tiers.model_run import (
    EXIT_CUDA_CONTEXT_LOST,
    CudaContextLost,
    ModelRun,
    bisect_budget,
    post_validate,
    run_model,
)
from topics.schemas import Tier

NAME: Final[str] = Tier.PRIMARY  # a StrEnum member: a str, `is`-comparable with the enum
CUDA_CONTEXT_LOST: Final = "cuda_context_lost"
_log = logging.getLogger(__name__)

__all__ = ["CUDA_CONTEXT_LOST", "EXIT_CUDA_CONTEXT_LOST", "NAME", "CudaContextLost", "PrimaryTier",
           "fatal_error", "thresholds_of"]


def fatal_error(ladder: object) -> CudaContextLost | None:
    """The first fatal fault recorded by one of a ladder's tiers (None: none). The worker
    checks it after each batch and exits with its `exit_code`."""
    tiers: Iterable[object] = getattr(ladder, "tiers", ())
    for tier in tiers:
        fatal = getattr(tier, "fatal", None)
        if isinstance(fatal, CudaContextLost):
            return fatal
    return None


def thresholds_of(model: Model | None) -> Thresholds:
    t = getattr(model, "thresholds", None)
    return t if isinstance(t, Thresholds) else DEFAULT_THRESHOLDS


def _verdict(run: ModelRun) -> Verdict:
    return run.verdict


class PrimaryTier(BaseTier):
    needs = (NAME, FEATURE_STORE)
    uses_event_rows = True

    def __init__(self, model: Model | None, executor: Executor, *, reserve_s: float,
                 max_poison_rows: int, min_confidence: float | None = None,
                 unavailable_reason: str = "", name: str = NAME) -> None:
        self.name = name
        self.model = model
        self.unavailable_reason = unavailable_reason or ("" if model else "not_configured")
        self.executor = executor
        self.reserve_s = reserve_s
        self.max_poison_rows = max_poison_rows
        self.thresholds = thresholds_of(model)
        self.min_confidence = (min_confidence if min_confidence is not None
                               else self.thresholds.min_confidence)
        self.max_rows: int | None = None  # rows per model call after an out-of-memory
        self._oom_at = 0  # the call size that ran out of memory
        self.fatal: CudaContextLost | None = None  # a sticky device error: the worker must exit

    @property
    def version(self) -> str:
        return self.model.version if self.model is not None else ""

    def score(self, view: BatchView, rows: IntArray, ctx: TierContext) -> TierResult:
        model = self.model
        if model is None or self.unavailable_reason:
            return TierResult.fail(rows, "unavailable")
        permit = ctx.breakers.acquire(self.name)
        if permit is None:
            return TierResult.fail(rows, "breaker_open")
        budget = view.deadline.reserve(self.reserve_s)
        if budget.expired():
            permit.release()
            return TierResult.fail(rows, "deadline")
        x, have = view.model_input(rows)
        if x is None:
            permit.release()
            return TierResult.fail(rows, "features_unavailable")
        result = TierResult.fail(rows[~have], "features_missing")
        rows, x = rows[have], x[have]
        if not rows.size or budget.expired():
            permit.release()
            if rows.size:
                result.failed.append((rows, "deadline"))
            return result
        max_calls = bisect_budget(len(x), self.max_poison_rows)
        max_rows = self.max_rows
        call = permit.run(budget.remaining(),
                          lambda _t: run_model(model, x, self.executor, budget, max_calls,
                                               max_rows),
                          _verdict)
        ctx.listener.on_stage_duration("primary_forward", call.elapsed_s)
        run = call.value
        if run is None:  # run_model raised: a bug, not the model's fault
            result.failed.append((rows, call.reason))
            return result
        self._adapt(run)
        if run.sticky is not None:
            self._context_lost(run.sticky, ctx)
        failed = np.zeros(rows.size, dtype=np.bool_)
        for part, reason in run.failures:
            failed[part] = True
            result.failed.append((rows[part], reason))
        ok_rows = np.flatnonzero(~failed)
        probs = run.probs[ok_rows]
        conf = model_confidence(probs)
        ok, bad = post_validate(probs, conf, self.min_confidence)
        result.failed.extend((rows[ok_rows[part]], reason) for part, reason in bad)
        result.idx, result.scores, result.confidence = rows[ok_rows[ok]], probs[ok], conf[ok]
        result.version, result.thresholds = model.version, self.thresholds
        return result

    # -- device faults -----------------------------------------------------------------------------
    def _adapt(self, run: ModelRun) -> None:
        """Halve the rows per call after an out-of-memory; double back on a clean batch."""
        if run.oom_rows:
            self.max_rows = max(1, run.oom_rows // 2)
            self._oom_at = max(self._oom_at, run.oom_rows)
            _log.warning("primary_oom_split tier=%s rows=%d max_rows=%d", self.name,
                         run.oom_rows, self.max_rows)
        elif self.max_rows is not None and run.verdict == "success" and not run.failures:
            self.max_rows *= 2
            if self.max_rows >= self._oom_at:
                self.max_rows, self._oom_at = None, 0

    def _context_lost(self, exc: BaseException, ctx: TierContext) -> None:
        if self.fatal is None:
            self.fatal = CudaContextLost(f"{self.name}: {type(exc).__name__}: {exc}")
            self.fatal.__cause__ = exc
            _log.error("%s tier=%s error=%s exit_code=%d", CUDA_CONTEXT_LOST, self.name, exc,
                       EXIT_CUDA_CONTEXT_LOST)
        breaker = ctx.breakers.get(self.name)
        if breaker is not None:
            breaker.force_open(CUDA_CONTEXT_LOST)
