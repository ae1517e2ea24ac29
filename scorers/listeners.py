"""Listener hooks: how the pure core reports what it does.

The core calls these at every event worth a metric; the defaults do nothing.
`stream_app.metrics` implements them with Prometheus. A listener must never
raise into the core: `SafeListener` wraps one, logs its errors and never raises them.
Tier and cache outcomes are reported per batch with counts, not per record,
so the hot path makes a handful of calls per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

CacheOutcome = Literal["hit", "miss", "stale"]
_log = logging.getLogger(__name__)
BatchCloseReason = Literal["size", "linger", "deadline", "flush"]
# Why a record was shed to the cheap tiers: past its event-time budget on arrival
# ("late"), or it ran past it while waiting inside rung ("overload").
ShedReason = Literal["late", "overload"]
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

    def on_shed(self, reason: str, count: int) -> None:
        """`count` records of one batch were past their event-time budget and left to
        the cheap tiers only (`reason`: a `ShedReason`)."""


class SafeListener(LadderListener):
    """Forwards every hook to another listener; an exception in it is logged, never raised."""

    def __init__(self, inner: LadderListener) -> None:
        self._inner = inner


def _forwarding(hook: str) -> Callable[..., None]:
    def forward(self: SafeListener, *args: Any) -> None:
        try:
            getattr(self._inner, hook)(*args)
        except Exception:  # noqa: BLE001 - listeners must not hurt scoring: logged, not raised
            _log.warning("listener %s failed", hook, exc_info=True)

    forward.__name__ = hook
    return forward


for _hook in [name for name in vars(LadderListener) if name.startswith("on_")]:
    setattr(SafeListener, _hook, _forwarding(_hook))
