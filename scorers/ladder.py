"""The ladder: an ordered list of tiers, then the safe default. Read this first.

`LadderSpec` says what a ladder is (tiers in order, breaker configs, budgets,
`mode`); `LadderDeps` what it talks to (event feature function, feature store,
clock, listener); `build_ladder(spec, deps)` builds it once. (`scorers.standard`
builds the usual spec from models and settings.)

`Ladder.score_batch(txs, deadline)` returns exactly one `Score` per record, in order,
and never raises. For each tier in order, the records still open and eligible
(none of the tier's required fields bad; event rows present if it reads them) go to
`tier.score`; failed rows get the reason `f"{tier.name}_{reason}"` and
`listener.on_degraded(tier.name, reason, n)`; a tier that raises is logged through
`listener.on_internal_error` and its rows move down. Whatever is left gets the safe
default (a constant, no I/O). Then the batch's policy review rules escalate what they
match, and, with `spec.explain`, the reviewed records get their model's feature
contributions (`scorers.explain`). The policy (`deps.policy`, `scorers.policy`) is
read once per batch and attached to its view: a reload applies at a batch boundary.

Shedding: `score_batch(txs, deadline, shed=reasons)` marks records that are past
their event-time budget (a reason per record, "" for the others; the live pipeline
decides, `stream_app.pipeline.shed_reasons`). A shed record carries its reason
(`late`/`overload`) first in its trail, is counted through `listener.on_shed`, and
only the tiers the spec names in `late_tiers` (by default the fallback and the
rules: no I/O, no feature fetch) may answer it; the others skip it. After scoring, bounded by what is left of the deadline:
each tier's `after` (cache write-back and revalidation). The ladder never writes the
feature store, in any mode: the live worker applies a batch's events after its Kafka
transaction committed, exactly once (`stream_app.features`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Literal

import numpy as np

from scorers.batch_view import FEATURE_STORE, BatchView, EventFeatures, Features
from scorers.breakers import Breakers
from scorers.clock import Clock, SystemClock
from scorers.config import BreakerConfig, LadderConfig
from scorers.deadline import Deadline
from scorers.executor import Executor
from scorers.explain import ExplainConfig, Explanations
from scorers.listeners import LadderListener, SafeListener
from scorers.outcome import Outcomes
from scorers.policy import PolicyHolder, apply_review_rules, attach, policy_of
from scorers.ports import FeatureStore
from scorers.tier import IntArray, Tier, TierContext, TierResult
from topics.schemas import Score, Transaction
from topics.schemas import Tier as TierName

__all__ = ["EventFeatures", "Ladder", "LadderDeps", "LadderSpec", "Mode", "build_ladder"]

Mode = Literal["live", "replay"]
_tier_of = attrgetter("tier")
_version_of = attrgetter("model_version")


@dataclass(frozen=True, slots=True)
class LadderSpec:
    tiers: tuple[Tier, ...]
    breakers: Mapping[str, BreakerConfig]
    config: LadderConfig = field(default_factory=LadderConfig)  # budgets
    mode: Mode = "live"
    # the tiers that may answer a shed (late) record: the cheap ones
    late_tiers: frozenset[str] = frozenset({TierName.FALLBACK, TierName.RULES})
    explain: ExplainConfig | None = None  # contributions in reviewed records' reasons; None: off


@dataclass(frozen=True, slots=True)
class LadderDeps:
    event_features: EventFeatures
    feature_store: FeatureStore | None = None
    online_feature_count: int = 0
    clock: Clock = field(default_factory=SystemClock)
    listener: LadderListener = field(default_factory=LadderListener)
    executors: tuple[Executor, ...] = ()  # closed with the ladder
    policy: PolicyHolder | None = None  # None: the built-in policy (scorers.policy.BUILTIN)


def build_ladder(spec: LadderSpec, deps: LadderDeps) -> Ladder:
    names = [t.name for t in spec.tiers]
    if len(set(names)) != len(names):
        raise ValueError(f"tier names must be unique: {names}")
    missing = {n for t in spec.tiers for n in t.needs} - set(spec.breakers)
    if deps.feature_store is not None and FEATURE_STORE not in spec.breakers:
        missing.add(FEATURE_STORE)
    if missing:
        raise ValueError(f"no breaker config for {sorted(missing)}")
    return Ladder(spec, deps)


class Ladder:
    def __init__(self, spec: LadderSpec, deps: LadderDeps) -> None:
        self.spec = spec
        self.config = spec.config
        self._clock = deps.clock
        self._listener = SafeListener(deps.listener)
        self._executors = deps.executors
        self.breakers = Breakers(spec.breakers, deps.clock, self._listener.on_breaker_transition)
        self.tiers = spec.tiers
        self.unavailable: dict[str, str] = {}
        for tier in self.tiers:
            if tier.unavailable_reason:
                self.unavailable[tier.name] = tier.unavailable_reason
                if tier.needs:
                    self.breakers[tier.needs[0]].force_open(tier.unavailable_reason)
        self._ctx = TierContext(deps.clock, self._listener, self.breakers)
        self.policy = deps.policy or PolicyHolder()
        self.explanations = (Explanations(self.tiers, spec.explain) if spec.explain is not None
                             else None)
        self._features = Features(deps.event_features, deps.feature_store, deps.online_feature_count,
                                  spec.config.feature_timeout_s, spec.config.fallback_reserve_s,
                                  deps.clock, self._listener, self.breakers)

    def tier(self, name: str) -> Tier:
        return next(t for t in self.tiers if t.name == name)

    # -- the public entry point ------------------------------------------------------------------
    def score_batch(self, txs: Sequence[Transaction], deadline: Deadline,
                    shed: Sequence[str] | None = None) -> list[Score]:
        """One score per record, in order; `shed[i]` non-empty: record i is late and only
        the spec's `late_tiers` may answer it (see the module docstring)."""
        start = self._clock.monotonic()
        out = Outcomes(len(txs))
        view: BatchView | None = None
        policy = self.policy.current  # the one read: a reload takes effect at the next batch
        try:
            late = self._shed(out, shed)
            view = BatchView(txs, deadline, self._features)
            attach(view, policy)
            out.note_each(view.plan.dirty, view.plan.reasons)
            reported = np.zeros(len(txs), dtype=np.bool_)
            for tier in self.tiers:
                self._run_tier(tier, view, out, reported, late)
            apply_review_rules(policy, txs, out)
            if self.explanations is not None:
                self.explanations.run(view, out, self._listener, self._clock)
        except Exception as exc:  # noqa: BLE001 - the ladder never raises; the rest gets the default
            self._listener.on_internal_error("ladder", exc)
            out.note(out.unanswered(), "internal_error")
        scores = out.to_scores(txs, self._clock.monotonic() - start, self._clock.wall(),
                               policy.version)
        self._report(scores)
        if view is not None:
            self._after(view, out)
        return scores

    def close(self) -> None:
        for executor in self._executors:
            executor.close()

    # -- shedding ---------------------------------------------------------------------------------
    def _shed(self, out: Outcomes, shed: Sequence[str] | None) -> np.ndarray | None:
        """The mask of shed records (None: none), their reasons noted and counted."""
        if shed is None:
            return None
        if len(shed) != out.n:
            raise ValueError(f"{len(shed)} shed reasons for {out.n} records")
        late = np.fromiter(map(bool, shed), dtype=np.bool_, count=out.n)
        if not late.any():
            return None
        idx = np.flatnonzero(late)
        out.note_each(idx, [(shed[i],) for i in idx.tolist()])
        for reason, count in Counter(shed[i] for i in idx.tolist()).items():
            self._listener.on_shed(reason, count)
        return late

    # -- one tier --------------------------------------------------------------------------------
    def _run_tier(self, tier: Tier, view: BatchView, out: Outcomes,
                  reported: np.ndarray, late: np.ndarray | None = None) -> None:
        open_ = ~out.answered
        if late is not None and tier.name not in self.spec.late_tiers:
            open_ &= ~late  # a shed record waits for a cheap tier
        eligible = view.eligible(tier.requires)
        invalid = open_ & ~eligible & ~reported
        n_invalid = int(np.count_nonzero(invalid))
        if n_invalid:
            reported |= invalid
            self._listener.on_degraded(tier.name, "invalid_input", n_invalid)
        mask = open_ & eligible
        if tier.uses_event_rows and mask.any():
            if view.event_failed is None:
                mask &= view.has_event_rows()
                if view.event_failed is not None:
                    out.note(view.event_failed, "event_features_error")
            else:
                mask &= view.has_event_rows()
        rows = np.flatnonzero(mask)
        if not rows.size:
            return
        t0 = self._clock.monotonic()
        try:
            result = tier.score(view, rows, self._ctx)
            for part in (result, *result.parts):
                thresholds = policy_of(view).thresholds_for(tier.name, part.version,
                                                            part.thresholds)
                out.assign(part.idx, tier.name, part.version, part.scores, part.confidence,
                           thresholds, flag=part.flags)
                if part.reasons is not None:
                    out.note_each(part.idx, part.reasons)
        except Exception as exc:  # noqa: BLE001 - a bug in one tier moves its rows down
            self._listener.on_internal_error(tier.name, exc)
            result = TierResult.fail(rows[~out.answered[rows]], "internal_error")
        finally:
            self._listener.on_stage_duration(tier.name, self._clock.monotonic() - t0)
        for idx, reason in result.failed:
            self._degrade(out, idx, tier.name, reason)

    def _degrade(self, out: Outcomes, idx: IntArray, name: str, reason: str) -> None:
        if idx.size:
            out.note(idx, f"{name}_{reason}")
            self._listener.on_degraded(name, reason, int(idx.size))
            if reason in ("timeout", "deadline"):
                self._listener.on_deadline_miss(name)

    # -- after the answers are fixed -------------------------------------------------------------
    def _after(self, view: BatchView, out: Outcomes) -> None:
        for tier in self.tiers:
            t0 = self._clock.monotonic()
            try:
                tier.after(view, out, self._ctx)
            except Exception as exc:  # noqa: BLE001 - side effects never change results
                self._listener.on_internal_error(f"{tier.name}_after", exc)
            finally:
                self._listener.on_stage_duration(f"{tier.name}_after", self._clock.monotonic() - t0)

    def _report(self, scores: Sequence[Score]) -> None:
        counts = Counter(zip(map(_tier_of, scores), map(_version_of, scores), strict=True))
        for (tier, version), count in counts.items():
            self._listener.on_tier_result(tier, version, count)
