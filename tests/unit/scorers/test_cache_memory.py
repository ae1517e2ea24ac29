from __future__ import annotations

import numpy as np
import pytest
from cache_contract import CONFIG, CacheContract

from scorers.cache import InMemoryPredictionCache, input_key
from scorers.clock import FakeClock
from scorers.ports import CachedPrediction


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


def test_input_keys_distinguish_inputs_and_versions() -> None:
    a = np.array([1.0, 0.0, 3.0], np.float32)
    b = np.array([1.001, 0.0, 3.0], np.float32)
    keys = {input_key("p", "v1", a), input_key("p", "v1", b), input_key("p", "v2", a)}
    assert len(keys) == 3 and input_key("p", "v1", a.copy()) == input_key("p", "v1", a)
