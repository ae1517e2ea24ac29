"""The cache tier inside the ladder: hits, stale-while-revalidate, down, slow."""

from __future__ import annotations

from collections.abc import Sequence

from ladder_fakes import RecordingListener, build, make_tx

from scorers.breaker import State
from scorers.cache import InMemoryPredictionCache
from scorers.clock import FakeClock
from scorers.config import CacheConfig
from scorers.deadline import Deadline
from scorers.ports import CachedPrediction
from topics.schemas import Tier

CFG = CacheConfig(enabled=True, soft_ttl_s=10.0, hard_ttl_s=100.0, timeout_s=0.005)


class FlakyCache(InMemoryPredictionCache):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__(CFG, clock)
        self.clock = clock
        self.down = False
        self.latency_s = 0.0

    def get_many(self, keys: Sequence[str], timeout_s: float) -> list[CachedPrediction | None]:
        self.clock.advance(self.latency_s)
        if self.down:
            raise ConnectionError("redis down")
        return super().get_many(keys, timeout_s)


def setup(clock: FakeClock):  # type: ignore[no-untyped-def]
    from ladder_fakes import small_config

    cache = FlakyCache(clock)
    listener = RecordingListener()
    ladder = build(clock, cache=cache, listener=listener, config=small_config(cache=CFG))
    return ladder, cache, listener


def test_second_sight_of_a_record_is_a_cache_hit() -> None:
    clock = FakeClock()
    ladder, _, listener = setup(clock)
    txs = [make_tx(i) for i in range(8)]
    first = ladder.score_batch(txs, Deadline.after(clock, 0.05))
    again = ladder.score_batch(txs[:4] + [make_tx(100)], Deadline.after(clock, 0.05))
    assert {s.tier for s in first} == {Tier.PRIMARY}
    assert [s.tier for s in again] == [Tier.CACHE] * 4 + [Tier.PRIMARY]
    assert again[0].score == first[0].score and again[0].model_version == "p-1"
    assert again[0].reasons == ("cache_hit",)
    assert ("cache", "hit", 4) in listener.events and ("cache", "miss", 1) in listener.events


def test_stale_hit_is_served_then_refreshed() -> None:
    clock = FakeClock()
    ladder, cache, _ = setup(clock)
    tx = make_tx(1)
    ladder.score_batch([tx], Deadline.after(clock, 0.05))
    clock.advance(CFG.soft_ttl_s + 1)
    stale = ladder.score_batch([tx], Deadline.after(clock, 0.05))
    assert stale[0].tier is Tier.CACHE and stale[0].reasons == ("cache_stale",)
    assert not ladder.tier("cache").revalidation_queue  # re-scored with the budget left and written back
    fresh = ladder.score_batch([tx], Deadline.after(clock, 0.05))
    assert fresh[0].reasons == ("cache_hit",)


def test_cache_down_costs_nothing_but_opens_its_breaker() -> None:
    clock = FakeClock()
    ladder, cache, listener = setup(clock)
    cache.down = True
    for _ in range(12):
        scores = ladder.score_batch([make_tx(i) for i in range(4)], Deadline.after(clock, 0.05))
        assert {s.tier for s in scores} == {Tier.PRIMARY}
    assert ladder.breakers["cache"].state is State.OPEN
    assert ladder.breakers["primary"].state is State.CLOSED


def test_slow_cache_counts_as_failure_and_primary_keeps_its_budget() -> None:
    clock = FakeClock()
    ladder, cache, _ = setup(clock)
    cache.latency_s = 0.02  # four times its own timeout
    for k in range(12):
        txs = [make_tx(10 * k + i) for i in range(4)]
        scores = ladder.score_batch(txs, Deadline.after(clock, 0.05))
        assert {s.tier for s in scores} == {Tier.PRIMARY}
    assert ladder.breakers["cache"].state is State.OPEN
