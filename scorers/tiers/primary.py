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
from scorers.models.slot import ModelSlot, ModelSwitch
from scorers.outcome import model_confidence
from scorers.ports import Model
from scorers.tier import DEFAULT_THRESHOLDS, BaseTier, IntArray, TierContext, TierResult
from scorers.tiers.model_run import (
    EXIT_CUDA_CONTEXT_LOST,
    CudaContextLost,
    ModelRun,
    post_validate,
)
from scorers.tiers.routed_run import routes_of, run_routes
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


def _routed_verdict(value: tuple[ModelRun, list[float]]) -> Verdict:
    return value[0].verdict


class PrimaryTier(BaseTier):
    needs = (NAME, FEATURE_STORE)
    uses_event_rows = True

    def __init__(self, model: Model | None, executor: Executor, *, reserve_s: float,
                 max_poison_rows: int, min_confidence: float | None = None,
                 unavailable_reason: str = "", name: str = NAME,
                 switch: ModelSwitch | None = None) -> None:
        self.name = name
        # the models as data (champion, optional canary): read once per batch in `score`
        self.switch = switch if switch is not None else ModelSwitch(ModelSlot(model))
        model = self.switch.slot.champion
        self.unavailable_reason = unavailable_reason or ("" if model else "not_configured")
        self.executor = executor
        self.reserve_s = reserve_s
        self.max_poison_rows = max_poison_rows
        self._min_confidence = min_confidence  # None: each model's own threshold
        self.max_rows: int | None = None  # rows per model call after an out-of-memory
        self._oom_at = 0  # the call size that ran out of memory
        self.fatal: CudaContextLost | None = None  # a sticky device error: the worker must exit

    @property
    def model(self) -> Model | None:
        """The champion of the current slot."""
        return self.switch.slot.champion

    @property
    def thresholds(self) -> Thresholds:
        return thresholds_of(self.model)

    @property
    def min_confidence(self) -> float:
        return self._min_confidence_of(self.model)

    def _min_confidence_of(self, model: Model | None) -> float:
        return (self._min_confidence if self._min_confidence is not None
                else thresholds_of(model).min_confidence)

    @property
    def version(self) -> str:
        return self.model.version if self.model is not None else ""

    def score(self, view: BatchView, rows: IntArray, ctx: TierContext) -> TierResult:
        slot = self.switch.slot  # read once: a published swap lands between batches
        model = slot.champion
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
        routes = routes_of(slot, view, rows)
        max_rows = self.max_rows
        call = permit.run(budget.remaining(),
                          lambda _t: run_routes(routes, x, self.executor, budget,
                                                self.max_poison_rows, max_rows, ctx.clock),
                          _routed_verdict)
        ctx.listener.on_stage_duration("primary_forward", call.elapsed_s)
        if call.value is None:  # run_model raised: a bug, not the model's fault
            result.failed.append((rows, call.reason))
            return result
        run, forward_s = call.value
        self._adapt(run)
        if run.sticky is not None:
            self._context_lost(run.sticky, ctx)
        failed = np.zeros(rows.size, dtype=np.bool_)
        for part, reason in run.failures:
            failed[part] = True
            result.failed.append((rows[part], reason))
        # one answered part per model (the champion's is `result` itself, a canary's is in
        # `result.parts`); `answered_by` says which model answered which rows
        answered_by: list[tuple[Model, TierResult]] = []
        for i, ((m, sel), elapsed_s) in enumerate(zip(routes, forward_s, strict=True)):
            answer = result if i == 0 else TierResult()
            ok_rows = np.flatnonzero(~failed & sel)
            probs = run.probs[ok_rows]
            conf = model_confidence(probs)
            ok, bad = post_validate(probs, conf, self._min_confidence_of(m))
            result.failed.extend((rows[ok_rows[p]], reason) for p, reason in bad)
            answer.idx, answer.scores, answer.confidence = rows[ok_rows[ok]], probs[ok], conf[ok]
            answer.version, answer.thresholds = m.version, thresholds_of(m)
            if i:
                result.parts.append(answer)
            answered_by.append((m, answer))
            self.switch.stats.record(
                m.version, routed=int(np.count_nonzero(sel)), answered=int(answer.idx.size),
                review=int(np.count_nonzero(answer.scores >= answer.thresholds.review)),
                failed=int(np.count_nonzero(sel)) - int(answer.idx.size), forward_s=elapsed_s,
                scores=answer.scores)
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
