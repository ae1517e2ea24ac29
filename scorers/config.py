"""Ladder configuration: frozen values, no I/O, no environment parsing.

`stream_app.config` (pydantic-settings) builds a `LadderConfig` from the
environment; the core only ever sees these plain values. All times in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

WindowType = Literal["count", "time"]


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    window_type: WindowType = "count"
    window_size: int = 50  # calls (count window) or seconds (time window)
    minimum_calls: int = 10
    failure_rate_threshold: float = 0.5  # 0..1
    slow_call_rate_threshold: float = 1.0  # 0..1; opens at >= this share (1.0: only when every call is slow)
    slow_call_duration_s: float = 0.05
    half_open_trial_calls: int = 3
    open_wait_s: float = 1.0
    open_wait_multiplier: float = 2.0
    max_open_wait_s: float = 30.0

    def __post_init__(self) -> None:
        if self.window_size < 1 or self.minimum_calls < 1 or self.half_open_trial_calls < 1:
            raise ValueError("window_size, minimum_calls and half_open_trial_calls must be >= 1")
        for rate in (self.failure_rate_threshold, self.slow_call_rate_threshold):
            if not 0.0 < rate <= 1.0:
                raise ValueError("rate thresholds must be in (0, 1]")
        if self.open_wait_s <= 0 or self.open_wait_multiplier < 1.0:
            raise ValueError("open_wait_s must be > 0 and open_wait_multiplier >= 1")
        if self.max_open_wait_s < self.open_wait_s:
            raise ValueError("max_open_wait_s must be >= open_wait_s")


@dataclass(frozen=True, slots=True)
class CacheConfig:
    soft_ttl_s: float = 300.0  # older entries are served stale and re-scored
    hard_ttl_s: float = 3600.0  # Redis expires entries after this
    timeout_s: float = 0.005  # cap per cache round trip (also the socket timeout)
    key_prefix: str = "rung:pred"
    max_revalidate: int = 1024  # bounded queue of stale records waiting to be re-scored

    def __post_init__(self) -> None:
        if not 0 < self.soft_ttl_s <= self.hard_ttl_s:
            raise ValueError("need 0 < soft_ttl_s <= hard_ttl_s")


@dataclass(frozen=True, slots=True)
class LadderConfig:
    deadline_s: float = 0.05  # per-batch budget the worker gives `score_batch`
    device: str = "auto"  # primary model device when build_ladder loads it: auto, cpu, cuda
    fallback_reserve_s: float = 0.005  # budget held back from the primary for fallback + rules
    feature_timeout_s: float = 0.015  # cap on one feature store fetch
    feature_update_timeout_s: float = 0.01
    primary_threads: int = 2  # bulkhead pool size
    # calls in the pool, running or queued; a hung call keeps its slot until it returns.
    # Equal to primary_threads: once every thread is hung, new calls are rejected at once.
    primary_max_outstanding: int = 2
    bisect_max_calls: int = 16  # primary calls spent isolating poison records in one batch
    primary_min_confidence: float | None = None  # None: the model's manifest threshold
    fallback_min_confidence: float | None = None
    primary_breaker: BreakerConfig = field(default_factory=BreakerConfig)
    fallback_breaker: BreakerConfig = field(default_factory=BreakerConfig)
    cache_breaker: BreakerConfig = field(
        default_factory=lambda: BreakerConfig(slow_call_duration_s=0.005, slow_call_rate_threshold=0.5)
    )
    feature_breaker: BreakerConfig = field(
        default_factory=lambda: BreakerConfig(slow_call_duration_s=0.015, slow_call_rate_threshold=0.5)
    )
    cache: CacheConfig = field(default_factory=CacheConfig)

    def __post_init__(self) -> None:
        if self.deadline_s <= 0 or self.fallback_reserve_s < 0:
            raise ValueError("deadline_s must be > 0 and fallback_reserve_s >= 0")
        if self.primary_threads < 1 or self.primary_max_outstanding < self.primary_threads:
            raise ValueError("need primary_threads >= 1 and primary_max_outstanding >= threads")
