"""Ladder configuration: frozen values, no I/O, no environment parsing.

The defaults are stated here, once: `stream_app.config` (pydantic-settings)
derives its own defaults from these dataclasses and builds a `LadderConfig`
and the breaker configs from the environment. All times in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

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


# The built-in breakers, by the name tiers `need` them. A name not listed here gets
# `BreakerConfig()`. The feature store's slow-call duration equals the fetch timeout
# (a slow call is one that would have timed out); measured healthy fetches of a
# 512-record batch on a loaded 2-core box stay under it (docs/budgets.md), an
# injected 50 ms latency does not.
DEFAULT_BREAKERS: Final = MappingProxyType({
    "primary": BreakerConfig(),
    "fallback": BreakerConfig(),
    "cache": BreakerConfig(slow_call_duration_s=0.005, slow_call_rate_threshold=0.5),
    # A wider window and more calls before judging: a CPU stall on a busy box can time
    # out a few fetches in a row; an outage fails every call, and fast.
    "feature_store": BreakerConfig(window_size=100, minimum_calls=20,
                                   slow_call_duration_s=0.04, slow_call_rate_threshold=0.5),
})


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = False  # off on the live path by default: see scorers/cache.py
    soft_ttl_s: float = 300.0  # older entries are served stale and re-scored
    hard_ttl_s: float = 3600.0  # Redis expires entries after this
    timeout_s: float = 0.005  # cap per cache round trip (also the socket timeout)
    key_prefix: str = "rung:pred"
    max_revalidate: int = 1024  # bounded queue of stale records waiting to be re-scored
    max_writes_per_batch: int = 256  # keys written back per batch, at most

    def __post_init__(self) -> None:
        if not 0 < self.soft_ttl_s <= self.hard_ttl_s:
            raise ValueError("need 0 < soft_ttl_s <= hard_ttl_s")
        if self.max_writes_per_batch < 0 or self.max_revalidate < 0:
            raise ValueError("max_writes_per_batch and max_revalidate must be >= 0")


@dataclass(frozen=True, slots=True)
class LadderConfig:
    device: str = "auto"  # primary model device when the ladder loads it: auto, cpu, cuda
    # Budgets inside the batch deadline (0.1 s by default), from measured distributions:
    # docs/budgets.md.
    fallback_reserve_s: float = 0.01  # budget held back from the primary for fallback + rules
    feature_timeout_s: float = 0.04  # cap on one feature store fetch (< an injected 50 ms)
    feature_update_timeout_s: float = 0.04
    primary_bulkhead_threads: int = 2  # bulkhead pool size (not torch's intra-op threads)
    # calls in the pool, running or queued; a hung call keeps its slot until it returns.
    # Equal to the threads: once every thread is hung, new calls are rejected at once.
    primary_bulkhead_max_outstanding: int = 2
    # Poison rows one batch may isolate by bisection; each costs 2*ceil(log2 n)+1 calls.
    max_poison_rows: int = 2
    primary_min_confidence: float | None = None  # None: the model's manifest threshold
    fallback_min_confidence: float | None = None
    # Seconds between run-time checks of the models' in-memory weights against the
    # checksum taken at load (a background thread, never the scoring one); 0 = off.
    integrity_check_interval_s: float = 30.0
    cache: CacheConfig = field(default_factory=CacheConfig)

    def __post_init__(self) -> None:
        if self.fallback_reserve_s < 0:
            raise ValueError("fallback_reserve_s must be >= 0")
        if (self.primary_bulkhead_threads < 1
                or self.primary_bulkhead_max_outstanding < self.primary_bulkhead_threads):
            raise ValueError("need primary_bulkhead_threads >= 1 and max_outstanding >= threads")
        if self.max_poison_rows < 0:
            raise ValueError("max_poison_rows must be >= 0")
        if not self.integrity_check_interval_s >= 0:
            raise ValueError("integrity_check_interval_s must be >= 0 (0: off)")


def replay_io_timeout_s(deadline_s: float) -> float:
    """Per-call budget for Redis in a replay: half the batch's (a 5,000-row feature read
    takes ~1 s on a busy 2-core box), at most 30 s."""
    return min(max(deadline_s / 2, 0.01), 30.0)
