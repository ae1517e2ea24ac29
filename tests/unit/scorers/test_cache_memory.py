from __future__ import annotations

import pytest
from cache_contract import CONFIG, CacheContract

from scorers.cache import InMemoryPredictionCache, canonical_bytes
from scorers.clock import FakeClock
from scorers.ports import CachedPrediction
from topics.schemas import Transaction


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(clock: FakeClock) -> InMemoryPredictionCache:
    return InMemoryPredictionCache(CONFIG, clock)


@pytest.fixture
def key_prefix() -> str:
    return "test"


class TestInMemoryCache(CacheContract):
    def test_hard_ttl_drops_entries(self, cache: InMemoryPredictionCache, clock: FakeClock) -> None:
        cache.put_many([("k", CachedPrediction(0.5, 0.0, clock.wall()))], 0.5)
        clock.advance(CONFIG.hard_ttl_s + 1)
        assert cache.get_many(["k"], 0.5) == [None]

    def test_bounded_size(self, clock: FakeClock) -> None:
        small = InMemoryPredictionCache(CONFIG, clock, max_entries=2)
        small.put_many([(f"k{i}", CachedPrediction(0.5, 0.0, clock.wall())) for i in range(5)], 0.5)
        assert small.get_many(["k0", "k4"], 0.5)[0] is None


def test_canonical_bytes_distinguish_fields() -> None:
    a = Transaction("x", 1.0, "c", "t", 1.0, "EUR", "5411", False, True, 1, "pos")
    b = Transaction("x", 1.0, "c", "t", 1.0000001, "EUR", "5411", False, True, 1, "pos")
    c = Transaction("x", 1.0, "c", "t", 1.0, "EUR", "5411", None, True, 1, "pos")
    assert len({canonical_bytes(a), canonical_bytes(b), canonical_bytes(c)}) == 3
