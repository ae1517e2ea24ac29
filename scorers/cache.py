"""Prediction cache: Redis and in-memory implementations of `PredictionCache`.

Key: `<prefix>:<model version>:<hash of the primary's input row>` (`input_key`):
event features + online features, after the fetch, so identical inputs share one
answer whatever their transaction id, and a new model version misses by
construction. The cache tier (`scorers.tiers.cache`) uses it.

Off by default on the live path (`RUNG_LADDER__CACHE_ENABLED=false`), and never
used in replay mode. Why: the online features move with every event of a customer
or terminal (the feature store folds each scored batch in), so two live records
rarely share an input row; keying on the transaction instead only ever answered
redeliveries. Either way every batch paid a Redis read and a write of one key per
record (1 h TTL) for few hits, and the primary on a 512-row batch costs about as
much as that round trip. Turn it on where inputs really repeat (coarse features,
retry storms), and watch `rung_cache_lookups_total{outcome}` for the hit rate.
Writes are bounded: at most `max_writes_per_batch` keys per batch, TTL from config.

Entries carry the writer's wall time. Older than the soft TTL they are
returned with `stale=True` (the ladder serves them and queues the record for
re-scoring and write-back); Redis drops them at the hard TTL. Reads are one
MGET, writes one pipeline of SET EX; both are bounded by the socket timeout of
the cache's own client (`RedisPredictionCache.from_url` / `stream_app.wiring`),
which is the cache timeout.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import redis

from scorers.clock import Clock, SystemClock
from scorers.config import CacheConfig
from scorers.ports import CachedPrediction, FloatMatrix

MIN_CALL_BUDGET_S = 0.0002  # below this a round trip cannot finish: don't start it


class CacheTimeout(TimeoutError):
    pass


def input_key(prefix: str, model_version: str, row: FloatMatrix) -> str:
    """`<prefix>:<model version>:<blake2b of the float32 input row>`."""
    digest = hashlib.blake2b(np.ascontiguousarray(row, dtype=np.float32).tobytes(),
                             digest_size=20).hexdigest()
    return f"{prefix}:{model_version}:{digest}"


def _encode(p: CachedPrediction) -> bytes:
    return f"{p.score!r}|{p.confidence!r}|{p.stored_at_s!r}".encode()


def _decode(raw: bytes | None, now_s: float, soft_ttl_s: float) -> CachedPrediction | None:
    if raw is None:
        return None
    try:
        score, conf, stored = (float(x) for x in raw.decode().split("|"))
    except (ValueError, UnicodeDecodeError):
        return None  # a foreign or corrupt value is a miss
    return CachedPrediction(score, conf, stored, stale=now_s - stored > soft_ttl_s)


class InMemoryPredictionCache:
    """A dict with the same TTL semantics; for tests and single-process runs."""

    def __init__(self, config: CacheConfig, clock: Clock, max_entries: int = 100_000) -> None:
        self._config = config
        self._clock = clock
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._data: dict[str, tuple[bytes, float]] = {}  # key -> (value, expires_at wall)

    def get_many(self, keys: Sequence[str], timeout_s: float) -> list[CachedPrediction | None]:
        if timeout_s < MIN_CALL_BUDGET_S:
            raise CacheTimeout("no budget for a cache read")
        now = self._clock.wall()
        out: list[CachedPrediction | None] = []
        with self._lock:
            for key in keys:
                entry = self._data.get(key)
                if entry is not None and entry[1] <= now:
                    del self._data[key]
                    entry = None
                out.append(_decode(entry[0], now, self._config.soft_ttl_s) if entry else None)
        return out

    def put_many(self, items: Sequence[tuple[str, CachedPrediction]], timeout_s: float) -> None:
        if timeout_s < MIN_CALL_BUDGET_S:
            raise CacheTimeout("no budget for a cache write")
        expires = self._clock.wall() + self._config.hard_ttl_s
        with self._lock:
            for key, pred in items:
                self._data[key] = (_encode(pred), expires)
            while len(self._data) > self._max_entries:
                del self._data[next(iter(self._data))]


class RedisPredictionCache:
    """redis-py client with a socket timeout and no retries: a slow Redis costs one timeout."""

    def __init__(self, client: redis.Redis, config: CacheConfig | None = None,
                 clock: Clock | None = None) -> None:
        """`client` should have been built with a socket timeout (see `from_url`): it is
        what bounds a slow Redis."""
        self._client = client
        self._config = config or CacheConfig()
        self._clock = clock or SystemClock()

    @classmethod
    def from_url(cls, url: str, config: CacheConfig, clock: Clock, **kwargs: Any) -> RedisPredictionCache:
        client = redis.Redis.from_url(
            url, socket_timeout=config.timeout_s, socket_connect_timeout=config.timeout_s,
            retry=None, retry_on_timeout=False, health_check_interval=0, **kwargs)
        return cls(client, config, clock)

    def get_many(self, keys: Sequence[str], timeout_s: float) -> list[CachedPrediction | None]:
        if timeout_s < MIN_CALL_BUDGET_S:
            raise CacheTimeout("no budget for a cache read")
        if not keys:
            return []
        raw = self._client.mget(list(keys))
        now = self._clock.wall()
        return [_decode(r.encode() if isinstance(r, str) else r, now, self._config.soft_ttl_s)
                for r in raw]

    def put_many(self, items: Sequence[tuple[str, CachedPrediction]], timeout_s: float) -> None:
        if timeout_s < MIN_CALL_BUDGET_S:
            raise CacheTimeout("no budget for a cache write")
        if not items:
            return
        ttl_ms = max(1, int(self._config.hard_ttl_s * 1000))
        pipe = self._client.pipeline(transaction=False)
        for key, pred in items:
            pipe.set(key, _encode(pred), px=ttl_ms)
        pipe.execute()

    def close(self) -> None:
        self._client.close()
