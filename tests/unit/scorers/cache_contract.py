"""The PredictionCache contract, run unchanged against every implementation.

Subclass `CacheContract` and provide fixtures `cache` (built with `CONFIG`)
and `clock` (a FakeClock the cache reads its wall time from)."""

from __future__ import annotations

from typing import Any

import numpy as np

from scorers.cache import input_key
from scorers.clock import FakeClock
from scorers.config import CacheConfig
from scorers.ports import CachedPrediction
from topics.schemas import Transaction

CONFIG = CacheConfig(soft_ttl_s=10.0, hard_ttl_s=100.0, timeout_s=0.5)


def _tx(i: int) -> Transaction:
    return Transaction(f"k{i}", 1.75e9, "c", "t", float(i), "EUR", "5411", False, True, 10, "pos")


class CacheContract:
    def keys(self, prefix: str, n: int, version: str = "v1") -> list[str]:
        return [input_key(prefix, version, np.array([_tx(i).amount or 0.0], np.float32))
                for i in range(n)]

    def test_miss_then_hit_in_order(self, cache: Any, clock: FakeClock, key_prefix: str) -> None:
        keys = self.keys(key_prefix, 3)
        assert cache.get_many(keys, 0.5) == [None, None, None]
        cache.put_many([(keys[2], CachedPrediction(0.25, 0.5, clock.wall())),
                        (keys[0], CachedPrediction(0.75, 0.5, clock.wall()))], 0.5)
        got = cache.get_many(keys, 0.5)
        assert got[1] is None
        assert got[0] is not None and got[0].score == 0.75 and not got[0].stale
        assert got[2] is not None and got[2].score == 0.25 and got[2].confidence == 0.5

    def test_soft_ttl_marks_stale_hard_ttl_expires(self, cache: Any, clock: FakeClock,
                                                   key_prefix: str) -> None:
        (key,) = self.keys(key_prefix, 1)
        cache.put_many([(key, CachedPrediction(0.1, 0.8, clock.wall()))], 0.5)
        clock.advance(CONFIG.soft_ttl_s + 1)
        got = cache.get_many([key], 0.5)[0]
        assert got is not None and got.stale and got.score == 0.1
        cache.put_many([(key, CachedPrediction(0.2, 0.6, clock.wall()))], 0.5)
        fresh = cache.get_many([key], 0.5)[0]
        assert fresh is not None and not fresh.stale and fresh.score == 0.2

    def test_model_version_is_part_of_the_key(self, cache: Any, clock: FakeClock,
                                              key_prefix: str) -> None:
        (k1,) = self.keys(key_prefix, 1, "v1")
        (k2,) = self.keys(key_prefix, 1, "v2")
        assert k1 != k2
        cache.put_many([(k1, CachedPrediction(0.3, 0.4, clock.wall()))], 0.5)
        assert cache.get_many([k2], 0.5) == [None]

    def test_empty_calls(self, cache: Any) -> None:
        assert cache.get_many([], 0.5) == []
        cache.put_many([], 0.5)

    def test_no_budget_is_refused_without_io(self, cache: Any, key_prefix: str) -> None:
        import pytest

        from scorers.cache import CacheTimeout

        with pytest.raises(CacheTimeout):
            cache.get_many(self.keys(key_prefix, 1), 0.0)
