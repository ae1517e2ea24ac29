"""`Ladder`, the descent itself: cache → primary → fallback → rules → safe default.

Import it from `scorers.ladder` (which also holds `build_ladder`, the wiring).

`score_batch(txs, deadline)` returns exactly one `Score` per record, in order,
and never raises. Pre-validation caps each record at the highest tier that
can score it; each stage gets only the budget left on the batch's `Deadline`
(the primary leaves `fallback_reserve_s` for the tiers below it); each
dependency sits behind its own `CircuitBreaker`. After scoring, bounded by what
is left of the deadline: primary answers are written to the cache, the batch
is folded into the feature store, and stale cache hits are re-scored.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from scorers import validation
from scorers.breaker import CircuitBreaker
from scorers.cache import MIN_CALL_BUDGET_S, cache_key
from scorers.clock import Clock
from scorers.config import LadderConfig
from scorers.deadline import Deadline
from scorers.executor import Executor
from scorers.guards import guarded_call, guarded_fetch, guarded_update
from scorers.listeners import LadderListener, SafeListener
from scorers.models.manifest import Thresholds
from scorers.outcome import IntArray, Outcomes, model_confidence
from scorers.ports import (
    BoolVector,
    CachedPrediction,
    FeatureStore,
    FloatMatrix,
    Model,
    PredictionCache,
)
from scorers.rules import RULES_CONFIDENCE, RULES_THRESHOLDS, RULES_VERSION, score_rules
from scorers.tiers import post_validate, run_model
from topics.schemas import Score, Tier, Transaction

EventFeatures = Callable[[Sequence[Transaction]], FloatMatrix]
DEFAULT_THRESHOLDS = Thresholds(review=0.5, block=0.9)
REVALIDATE_MAX_BATCH = 256
R = TypeVar("R")


@dataclass(slots=True)
class _Batch:
    """Batch-local working state."""

    txs: Sequence[Transaction]
    deadline: Deadline
    out: Outcomes
    levels: npt.NDArray[np.int8]
    event_pos: IntArray  # row of each record in `event_rows`, -1 if none
    event_rows: FloatMatrix | None = None
    keys: dict[int, str] = field(default_factory=dict)
    primary_idx: IntArray = field(default_factory=lambda: np.empty(0, dtype=np.intp))


def _thresholds(model: Model | None) -> Thresholds:
    t = getattr(model, "thresholds", None)
    return t if isinstance(t, Thresholds) else DEFAULT_THRESHOLDS


class Ladder:
    def __init__(self, config: LadderConfig, *, primary: Model | None, fallback: Model | None,
                 cache: PredictionCache | None, feature_store: FeatureStore | None,
                 event_features: EventFeatures, clock: Clock, listener: LadderListener,
                 executor: Executor, primary_unavailable_reason: str = "",
                 fallback_unavailable_reason: str = "",
                 online_feature_count: int | None = None) -> None:
        self.config = config
        self.primary, self.fallback = primary, fallback
        self.cache, self.feature_store = cache, feature_store
        self._event_features = event_features
        self._clock = clock
        self._listener = SafeListener(listener)
        self._executor = executor
        hook = self._listener.on_breaker_transition
        self.breakers: dict[str, CircuitBreaker] = {
            "primary": CircuitBreaker("primary", config.primary_breaker, clock, hook),
            "fallback": CircuitBreaker("fallback", config.fallback_breaker, clock, hook),
            "cache": CircuitBreaker("cache", config.cache_breaker, clock, hook),
            "feature_store": CircuitBreaker("feature_store", config.feature_breaker, clock, hook),
        }
        self.primary_unavailable_reason = primary_unavailable_reason
        self.fallback_unavailable_reason = fallback_unavailable_reason
        if primary is None or primary_unavailable_reason:
            self.primary_unavailable_reason = primary_unavailable_reason or "not_configured"
            self.breakers["primary"].force_open(self.primary_unavailable_reason)
        if fallback is None or fallback_unavailable_reason:
            self.fallback_unavailable_reason = fallback_unavailable_reason or "not_configured"
            self.breakers["fallback"].force_open(self.fallback_unavailable_reason)
        if online_feature_count is None:
            online_feature_count = (len(primary.feature_names) - len(fallback.feature_names)
                                    if primary is not None and fallback is not None else 0)
        self.online_feature_count = online_feature_count
        self._primary_t = _thresholds(primary)
        self._fallback_t = _thresholds(fallback)
        self._primary_min_conf = (config.primary_min_confidence
                                  if config.primary_min_confidence is not None
                                  else self._primary_t.min_confidence)
        self._fallback_min_conf = (config.fallback_min_confidence
                                   if config.fallback_min_confidence is not None
                                   else self._fallback_t.min_confidence)
        self.revalidation_queue: deque[Transaction] = deque(maxlen=config.cache.max_revalidate)

    # -- the public entry point ------------------------------------------------------------------
    def score_batch(self, txs: Sequence[Transaction], deadline: Deadline) -> list[Score]:
        start = self._clock.monotonic()
        b = _Batch(txs, deadline, Outcomes(len(txs)), np.full(len(txs), validation.DEFAULT, np.int8),
                   np.full(len(txs), -1, dtype=np.intp))
        try:
            self._descend(b)
        except Exception:  # noqa: BLE001 - the ladder never raises; the rest gets the default
            b.out.note(b.out.unanswered(), "internal_error")
        scores = b.out.to_scores(txs, self._clock.monotonic() - start, self._clock.wall())
        self._report(scores)
        try:
            self._after(b)
        except Exception:  # noqa: BLE001 - side effects never change results
            pass
        return scores

    def close(self) -> None:
        self._executor.close()

    # -- the descent -----------------------------------------------------------------------------
    def _descend(self, b: _Batch) -> None:
        plan = validation.plan(b.txs)
        b.levels = plan.levels
        everyone = np.arange(len(b.txs))
        b.out.note_each(everyone, plan.reasons)
        invalid = int(np.count_nonzero(plan.levels > validation.PRIMARY))
        if invalid:
            self._listener.on_degraded(Tier.PRIMARY, "invalid_input", invalid)
        self._compute_event_rows(b)
        b.primary_idx = np.flatnonzero(b.levels == validation.PRIMARY)
        misses = self._cache_stage(b, b.primary_idx)
        self._primary_stage(b, misses)
        self._fallback_stage(b, b.out.unanswered()[b.levels[b.out.unanswered()] <= validation.FALLBACK])
        left = b.out.unanswered()
        self._rules_stage(b, left[b.levels[left] <= validation.RULES])

    def _degrade(self, b: _Batch, idx: IntArray, tier: Tier, reason: str) -> None:
        if idx.size:
            b.out.note(idx, f"{tier}_{reason}")
            self._listener.on_degraded(tier, reason, int(idx.size))

    def _compute_event_rows(self, b: _Batch) -> None:
        idx = np.flatnonzero(b.levels <= validation.FALLBACK)
        if not idx.size:
            return
        t0 = self._clock.monotonic()
        try:
            rows = np.asarray(self._event_features([b.txs[i] for i in idx.tolist()]), dtype=np.float32)
            if rows.ndim != 2 or rows.shape[0] != idx.size:
                raise ValueError(f"event_features returned shape {rows.shape}")
        except Exception:  # noqa: BLE001 - a feature bug sends the records to the rules
            b.out.note(idx, "event_features_error")
            b.levels[idx] = validation.RULES
            return
        finally:
            self._listener.on_stage_duration("features", self._clock.monotonic() - t0)
        b.event_rows = rows
        b.event_pos[idx] = np.arange(idx.size)

    # -- cache -----------------------------------------------------------------------------------
    def _cache_stage(self, b: _Batch, idx: IntArray) -> IntArray:
        if self.cache is None or self.primary is None or not idx.size:
            return idx
        prefix, version = self.config.cache.key_prefix, self.primary.version
        keys = [cache_key(prefix, version, b.txs[i]) for i in idx.tolist()]
        b.keys.update(zip(idx.tolist(), keys, strict=True))
        got = self._guarded_cache_call(b, lambda t: self._cache_get(keys, t))
        if got is None:
            self._listener.on_cache("miss", int(idx.size))
            return idx
        hit = np.array([g is not None and 0.0 <= g.score <= 1.0 for g in got], dtype=np.bool_)
        stale = [i for i, g in zip(idx.tolist(), got, strict=True) if g is not None and g.stale]
        hit_idx = idx[hit]
        if hit_idx.size:
            preds = [g for g in got if g is not None and 0.0 <= g.score <= 1.0]
            fresh = np.array([not p.stale for p in preds], dtype=np.bool_)
            b.out.note(hit_idx[fresh], "cache_hit")
            b.out.note(hit_idx[~fresh], "cache_stale")
            b.out.assign(hit_idx, Tier.CACHE, version, np.array([p.score for p in preds]),
                         np.array([p.confidence for p in preds]), self._primary_t)
            self.revalidation_queue.extend(b.txs[i] for i in stale)
        self._listener.on_cache("hit", int(hit_idx.size) - len(stale))
        self._listener.on_cache("stale", len(stale))
        self._listener.on_cache("miss", int(idx.size - hit_idx.size))
        return idx[~hit]

    def _cache_get(self, keys: list[str], timeout_s: float) -> list[CachedPrediction | None]:
        assert self.cache is not None
        got = self.cache.get_many(keys, timeout_s)
        if len(got) != len(keys):
            raise ValueError(f"cache returned {len(got)} entries for {len(keys)} keys")
        return got

    def _guarded_cache_call(self, b: _Batch, call: Callable[[float], R]) -> R | None:
        """Run a cache call under its breaker and min(cache timeout, remaining budget)."""
        timeout_s = min(self.config.cache.timeout_s, b.deadline.remaining())
        if timeout_s < MIN_CALL_BUDGET_S:
            return None
        t0 = self._clock.monotonic()
        try:
            return guarded_call(self.breakers["cache"], self._clock, timeout_s, call)
        finally:
            self._listener.on_stage_duration("cache", self._clock.monotonic() - t0)

    # -- primary ---------------------------------------------------------------------------------
    def _primary_stage(self, b: _Batch, idx: IntArray) -> None:
        if not idx.size:
            return
        if self.primary is None or not self.breakers["primary"].acquire():
            reason = "unavailable" if self.primary_unavailable_reason else "breaker_open"
            self._degrade(b, idx, Tier.PRIMARY, reason)
            return
        idx, probs = self._primary_probs(b.txs, idx, b.event_rows, b.event_pos, b.deadline,
                                         lambda rows, why: self._degrade(b, rows, Tier.PRIMARY, why))
        if not idx.size:
            return
        conf = model_confidence(probs)
        ok, bad = post_validate(probs, conf, self._primary_min_conf)
        for rows, reason in bad:
            self._degrade(b, idx[rows], Tier.PRIMARY, reason)
        b.out.assign(idx[ok], Tier.PRIMARY, self.primary.version, probs[ok], conf[ok],
                     self._primary_t)

    def _primary_probs(self, txs: Sequence[Transaction], idx: IntArray,
                       event_rows: FloatMatrix | None, event_pos: IntArray, deadline: Deadline,
                       degrade: Callable[[IntArray, str], None]) -> tuple[IntArray, npt.NDArray[np.float64]]:
        """Features + model call for `idx` (the primary permit is held by the caller).
        Returns the records answered and their raw probabilities."""
        breaker = self.breakers["primary"]
        assert self.primary is not None and event_rows is not None
        budget = deadline.reserve(self.config.fallback_reserve_s)
        if budget.expired():
            breaker.release()
            self._listener.on_deadline_miss("primary")
            degrade(idx, "deadline")
            return idx[:0], np.empty(0)
        online, have = self._fetch_online(txs, idx, deadline)
        if online is None:
            breaker.release()
            degrade(idx, "features_unavailable")
            return idx[:0], np.empty(0)
        degrade(idx[~have], "features_missing")
        idx, online = idx[have], online[have]
        if not idx.size or budget.expired():
            breaker.release()
            if idx.size:
                self._listener.on_deadline_miss("primary")
                degrade(idx, "deadline")
            return idx[:0], np.empty(0)
        x = np.hstack([event_rows[event_pos[idx]], online]).astype(np.float32, copy=False)
        t0 = self._clock.monotonic()
        run = run_model(self.primary, x, self._executor, budget, self.config.bisect_max_calls)
        elapsed = self._clock.monotonic() - t0
        self._listener.on_stage_duration("primary", elapsed)
        if run.verdict == "success":
            breaker.on_success(elapsed)
        elif run.verdict == "failure":
            breaker.on_failure(elapsed)
        else:
            breaker.release()
        for rows, reason in run.failures:
            if reason == "timeout":
                self._listener.on_deadline_miss("primary")
            degrade(idx[rows], reason)
        answered = np.flatnonzero(~np.isin(np.arange(idx.size), _failed_rows(run.failures)))
        return idx[answered], run.probs[answered]

    def _fetch_online(self, txs: Sequence[Transaction], idx: IntArray,
                      deadline: Deadline) -> tuple[FloatMatrix | None, BoolVector]:
        if self.feature_store is None:
            if self.online_feature_count:
                return None, np.zeros(idx.size, dtype=np.bool_)
            return np.zeros((idx.size, 0), np.float32), np.ones(idx.size, dtype=np.bool_)
        timeout_s = min(self.config.feature_timeout_s,
                        deadline.remaining() - self.config.fallback_reserve_s)
        return guarded_fetch(self.feature_store, self.breakers["feature_store"], self._clock,
                             [txs[i] for i in idx.tolist()], timeout_s, self.online_feature_count,
                             self._listener)

    # -- fallback, rules -------------------------------------------------------------------------
    def _fallback_stage(self, b: _Batch, idx: IntArray) -> None:
        if not idx.size:
            return
        breaker = self.breakers["fallback"]
        if self.fallback is None or b.event_rows is None or not breaker.acquire():
            reason = "unavailable" if self.fallback_unavailable_reason else "breaker_open"
            self._degrade(b, idx, Tier.FALLBACK, reason)
            return
        t0 = self._clock.monotonic()
        try:  # inline on the caller's thread: CPU, no shared pool or lock with the primary
            probs = np.asarray(self.fallback.predict(b.event_rows[b.event_pos[idx]]),
                               dtype=np.float64)
            if probs.shape != (idx.size,):
                raise ValueError(f"fallback returned shape {probs.shape}")
        except Exception:  # noqa: BLE001 - any fallback fault moves the rows to the rules
            breaker.on_failure(self._clock.monotonic() - t0)
            self._degrade(b, idx, Tier.FALLBACK, "exception")
            return
        elapsed = self._clock.monotonic() - t0
        breaker.on_success(elapsed)
        self._listener.on_stage_duration("fallback", elapsed)
        conf = model_confidence(probs)
        ok, bad = post_validate(probs, conf, self._fallback_min_conf)
        for rows, reason in bad:
            self._degrade(b, idx[rows], Tier.FALLBACK, reason)
        b.out.assign(idx[ok], Tier.FALLBACK, self.fallback.version, probs[ok], conf[ok],
                     self._fallback_t)

    def _rules_stage(self, b: _Batch, idx: IntArray) -> None:
        if not idx.size:
            return
        t0 = self._clock.monotonic()
        res = score_rules([b.txs[i] for i in idx.tolist()])
        b.out.note_each(idx, res.reasons)
        b.out.assign(idx, Tier.RULES, RULES_VERSION, res.scores,
                     np.full(idx.size, RULES_CONFIDENCE), RULES_THRESHOLDS, flag=res.fired)
        self._listener.on_stage_duration("rules", self._clock.monotonic() - t0)

    # -- after the answers are fixed -------------------------------------------------------------
    def _after(self, b: _Batch) -> None:
        self._write_back(b)
        self._update_features(b)
        if self.revalidation_queue:
            self.revalidate(b.deadline)

    def _write_back(self, b: _Batch) -> None:
        if self.cache is None or self.primary is None:
            return
        rows = [i for i in b.primary_idx.tolist() if b.out.tier[i] is Tier.PRIMARY]
        if not rows:
            return
        prefix, version, now = self.config.cache.key_prefix, self.primary.version, self._clock.wall()
        items = [(b.keys.get(i) or cache_key(prefix, version, b.txs[i]),
                  CachedPrediction(float(b.out.score[i]), float(b.out.confidence[i]), now))
                 for i in rows]
        assert self.cache is not None
        cache = self.cache
        self._guarded_cache_call(b, lambda t: cache.put_many(items, t))

    def _update_features(self, b: _Batch) -> None:
        if self.feature_store is None or not b.primary_idx.size:
            return
        timeout_s = min(self.config.feature_update_timeout_s, b.deadline.remaining())
        if timeout_s <= 0:
            self._listener.on_deadline_miss("feature_update")
            return
        guarded_update(self.feature_store, self.breakers["feature_store"], self._clock,
                       [b.txs[i] for i in b.primary_idx.tolist()], timeout_s)

    def revalidate(self, deadline: Deadline) -> int:
        """Re-score queued stale cache hits on the primary and write them back, within
        `deadline` less the fallback reserve. Returns how many were refreshed."""
        if self.cache is None or self.primary is None or not self.revalidation_queue:
            return 0
        if deadline.reserve(self.config.fallback_reserve_s).expired():
            return 0
        txs = [self.revalidation_queue.popleft()
               for _ in range(min(REVALIDATE_MAX_BATCH, len(self.revalidation_queue)))]
        b = _Batch(txs, deadline, Outcomes(len(txs)), validation.plan(txs).levels,
                   np.full(len(txs), -1, dtype=np.intp))
        self._compute_event_rows(b)
        idx = np.flatnonzero(b.levels == validation.PRIMARY)
        if not idx.size or not self.breakers["primary"].acquire():
            return 0
        idx, probs = self._primary_probs(txs, idx, b.event_rows, b.event_pos, deadline,
                                         lambda _rows, _why: None)
        conf = model_confidence(probs)
        ok, _ = post_validate(probs, conf, self._primary_min_conf)
        b.out.assign(idx[ok], Tier.PRIMARY, self.primary.version, probs[ok], conf[ok],
                     self._primary_t)
        b.primary_idx = idx[ok]
        self._write_back(b)
        return int(ok.sum())

    def _report(self, scores: Sequence[Score]) -> None:
        counts = Counter(zip(map(_tier_of, scores), map(_version_of, scores), strict=True))
        for (tier, version), count in counts.items():
            self._listener.on_tier_result(tier, version, count)


_tier_of = attrgetter("tier")
_version_of = attrgetter("model_version")


def _failed_rows(failures: list[tuple[IntArray, str]]) -> IntArray:
    if not failures:
        return np.empty(0, dtype=np.intp)
    return np.concatenate([rows for rows, _ in failures])
