"""Listener hooks: how the pure core reports what it does.

The core calls these at every event worth a metric; the defaults do nothing.
`stream_app.metrics` implements them with Prometheus. A listener must never
raise into the core: `SafeListener` wraps one and swallows its errors.
Tier and cache outcomes are reported per batch with counts, not per record,
so the hot path makes a handful of calls per batch.
"""

from __future__ import annotations

from typing import Literal

CacheOutcome = Literal["hit", "miss", "stale"]
BatchCloseReason = Literal["size", "linger", "deadline", "flush"]
# stages: "decode", "features", "cache", "primary", "fallback", "rules", "produce", "commit"


class LadderListener:
    """No-op base: subclass and override what you need."""

    def on_batch_formed(self, size: int, reason: BatchCloseReason) -> None:
        """The micro-batcher closed a batch of `size` records."""

    def on_tier_result(self, tier: str, model_version: str, count: int) -> None:
        """`count` records of one batch were answered by `tier`."""

    def on_degraded(self, from_tier: str, reason: str, count: int) -> None:
        """`count` records left `from_tier` for a lower one, for `reason`
        (timeout, exception, cuda_error, oom, nan, low_confidence, invalid_input,
        features_missing, breaker_open, integrity)."""

    def on_breaker_transition(self, dependency: str, from_state: str, to_state: str) -> None:
        """A circuit breaker changed state (closed, open, half_open, forced_open, disabled)."""

    def on_deadline_miss(self, stage: str) -> None:
        """A stage ran out of the batch's budget."""

    def on_cache(self, outcome: CacheOutcome, count: int) -> None:
        """Prediction cache lookups for one batch: hits, misses, stale hits."""

    def on_stage_duration(self, stage: str, seconds: float) -> None:
        """Time one stage of one batch took."""

    def on_internal_error(self, stage: str, exc: BaseException) -> None:
        """A bug: `stage` (a tier's name, `<tier>_after`, `feature_update`, `ladder`)
        raised `exc`. The records were still answered."""

    def on_cache_revalidation_dropped(self, count: int) -> None:
        """Stale cache hits not queued for re-scoring: the queue was full."""


class SafeListener(LadderListener):
    """Forwards to another listener; an exception in it is dropped, never raised."""

    def __init__(self, inner: LadderListener) -> None:
        self._inner = inner

    def on_batch_formed(self, size: int, reason: BatchCloseReason) -> None:
        try:
            self._inner.on_batch_formed(size, reason)
        except Exception:  # noqa: BLE001 - listeners must not hurt scoring
            pass

    def on_tier_result(self, tier: str, model_version: str, count: int) -> None:
        try:
            self._inner.on_tier_result(tier, model_version, count)
        except Exception:  # noqa: BLE001
            pass

    def on_degraded(self, from_tier: str, reason: str, count: int) -> None:
        try:
            self._inner.on_degraded(from_tier, reason, count)
        except Exception:  # noqa: BLE001
            pass

    def on_breaker_transition(self, dependency: str, from_state: str, to_state: str) -> None:
        try:
            self._inner.on_breaker_transition(dependency, from_state, to_state)
        except Exception:  # noqa: BLE001
            pass

    def on_deadline_miss(self, stage: str) -> None:
        try:
            self._inner.on_deadline_miss(stage)
        except Exception:  # noqa: BLE001
            pass

    def on_cache(self, outcome: CacheOutcome, count: int) -> None:
        try:
            self._inner.on_cache(outcome, count)
        except Exception:  # noqa: BLE001
            pass

    def on_stage_duration(self, stage: str, seconds: float) -> None:
        try:
            self._inner.on_stage_duration(stage, seconds)
        except Exception:  # noqa: BLE001
            pass

    def on_internal_error(self, stage: str, exc: BaseException) -> None:
        try:
            self._inner.on_internal_error(stage, exc)
        except Exception:  # noqa: BLE001
            pass

    def on_cache_revalidation_dropped(self, count: int) -> None:
        try:
            self._inner.on_cache_revalidation_dropped(count)
        except Exception:  # noqa: BLE001
            pass
