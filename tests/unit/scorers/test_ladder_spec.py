"""The ladder as data: a tier defined only here, per-tier failure isolation, the
bisection budget on real batch sizes, and the registry's one call path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ladder_fakes import (
    EVENT_NAMES,
    PRIMARY_NAMES,
    FakeStore,
    RecordingListener,
    VirtualTimeExecutor,
    build,
    event_features,
    make_tx,
    primary_model,
    write_model_dir,
)

from scorers.batch_view import BatchView
from scorers.breaker import State
from scorers.breakers import Breakers
from scorers.cache import InMemoryPredictionCache
from scorers.clock import FakeClock
from scorers.config import BreakerConfig, CacheConfig
from scorers.deadline import Deadline
from scorers.faults import FaultSwitch, FaultyModel
from scorers.models.manifest import Thresholds
from scorers.tier import BaseTier, IntArray, TierContext, TierResult
from scorers.tiers.model_run import bisect_budget
from topics.schemas import Tier


class Listener(RecordingListener):
    def on_internal_error(self, stage: str, exc: BaseException) -> None:
        self.events.append(("internal_error", stage, type(exc).__name__))

    def on_cache_revalidation_dropped(self, count: int) -> None:
        self.events.append(("revalidation_dropped", count))


class EnrichmentTier(BaseTier):
    """A second model behind its own breaker: answers the big amounts, fails on demand."""

    name = "enrichment"
    needs = ("enrichment_api",)
    requires = frozenset({"amount"})

    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    def score(self, view: BatchView, rows: IntArray, ctx: TierContext) -> TierResult:
        mine = rows[[view.txs[i].amount >= 20.0 for i in rows.tolist()]]

        def call(_timeout_s: float) -> np.ndarray:
            self.calls += 1
            if self.down:
                raise ConnectionError("enrichment down")
            return np.full(mine.size, 0.7)

        got = ctx.breakers.call("enrichment_api", 0.01, call)
        if got.value is None:
            return TierResult.fail(mine, got.reason)
        return TierResult(mine, got.value, np.full(mine.size, 0.4), "enrich-1",
                          Thresholds(review=0.6, block=0.95), reasons=[("enriched",)] * mine.size)


def test_a_tier_defined_only_here_answers_and_reports_under_its_name() -> None:
    clock = FakeClock()
    listener = Listener()
    tier = EnrichmentTier()
    ladder = build(clock, primary=None, listener=listener, extra_tiers=[("fallback", tier)],
                   breakers={"enrichment_api": BreakerConfig(minimum_calls=2, window_size=2)})
    assert [t.name for t in ladder.tiers] == ["primary", "enrichment", "fallback", "rules"]
    assert "enrichment_api" in ladder.breakers
    txs = [make_tx(i) for i in range(16)]  # amounts 10..25
    scores = ladder.score_batch(txs, Deadline.after(clock, 0.05))
    assert [s.tier for s in scores] == ["fallback"] * 10 + ["enrichment"] * 6
    assert scores[12].reasons == ("primary_unavailable", "enriched")
    assert scores[12].model_version == "enrich-1" and scores[12].action.value == "review"
    assert ("tier", "enrichment", "enrich-1", 6) in listener.events
    tier.down = True
    scores = ladder.score_batch(txs, Deadline.after(clock, 0.05))  # 1 of 2 calls failed: open
    assert scores[12].reasons == ("primary_unavailable", "enrichment_exception")
    assert scores[12].tier is Tier.FALLBACK
    assert ("degraded", "enrichment", "exception", 6) in listener.events
    assert ("breaker", "enrichment_api", "closed", "open") in listener.events
    calls = tier.calls
    scores = ladder.score_batch(txs, Deadline.after(clock, 0.05))
    assert scores[12].reasons == ("primary_unavailable", "enrichment_breaker_open")
    assert tier.calls == calls  # the open breaker kept the call from being made


def test_a_bug_in_one_tier_moves_its_rows_down_and_is_counted() -> None:
    class Buggy(BaseTier):
        name = "buggy"

        def score(self, view: BatchView, rows: IntArray, ctx: TierContext) -> TierResult:
            raise ZeroDivisionError("bug")

        def after(self, view: BatchView, out: Any, ctx: TierContext) -> None:
            raise KeyError("after bug")

    clock = FakeClock()
    listener = Listener()
    ladder = build(clock, listener=listener, extra_tiers=[("primary", Buggy())])
    scores = ladder.score_batch([make_tx(i) for i in range(4)], Deadline.after(clock, 0.05))
    assert {s.tier for s in scores} == {Tier.PRIMARY}
    assert {s.reasons for s in scores} == {("buggy_internal_error",)}
    assert ("internal_error", "buggy", "ZeroDivisionError") in listener.events
    assert ("internal_error", "buggy_after", "KeyError") in listener.events


def test_the_bisection_budget_scales_with_the_batch() -> None:
    assert bisect_budget(512, 1) == 19 and bisect_budget(512, 2) == 38
    assert bisect_budget(1, 2) == 2 and bisect_budget(16, 0) == 1


def _poison_run(poison: set[int]) -> tuple[list[Any], FaultyModel]:
    clock = FakeClock()
    executor = VirtualTimeExecutor(clock)
    switch = FaultSwitch()
    model = FaultyModel(primary_model(executor=executor), switch)
    ladder = build(clock, primary=model, executor=executor)
    switch.set(poison_ids=frozenset(10.0 + i for i in poison))  # amount = 10 + i
    txs = [make_tx(i) for i in range(512)]
    return ladder.score_batch(txs, Deadline.after(clock, 10.0)), ladder


def test_one_poison_row_in_512_is_isolated() -> None:
    scores, ladder = _poison_run({300})
    assert [i for i, s in enumerate(scores) if s.tier is not Tier.PRIMARY] == [300]
    assert scores[300].reasons == ("primary_poison",)
    assert ladder.breakers["primary"].state is State.CLOSED


def test_two_poison_rows_in_512_are_isolated() -> None:
    scores, _ = _poison_run({3, 400})
    assert [i for i, s in enumerate(scores) if s.tier is not Tier.PRIMARY] == [3, 400]
    assert {scores[3].reasons, scores[400].reasons} == {("primary_poison",)}


def test_a_corrupted_fallback_leaves_its_tier_unavailable_not_the_process(tmp_path: Path) -> None:
    fallback_dir = write_model_dir(tmp_path / "f", EVENT_NAMES)
    (fallback_dir / "weights.pt").write_bytes(b"corrupted")
    clock = FakeClock()
    ladder = build(clock, primary=write_model_dir(tmp_path / "p", PRIMARY_NAMES),
                   fallback=fallback_dir)
    assert ladder.unavailable["fallback"].startswith("integrity")
    assert ladder.breakers["fallback"].state is State.FORCED_OPEN
    scores = ladder.score_batch([make_tx(i, customer_id=None) for i in range(3)],
                                Deadline.after(clock, 0.05))
    assert {s.tier for s in scores} == {Tier.RULES}
    assert all("fallback_unavailable" in s.reasons for s in scores)


def test_the_cache_keys_on_the_model_input_and_counts_dropped_revalidations() -> None:
    clock = FakeClock()
    listener = Listener()
    cfg = CacheConfig(enabled=True, soft_ttl_s=1.0, hard_ttl_s=100.0, max_revalidate=0,
                      max_writes_per_batch=3)
    ladder = build(clock, cache=InMemoryPredictionCache(cfg, clock), listener=listener,
                   config=_config(cache=cfg), feature_store=FakeStore(clock))
    ladder.score_batch([make_tx(i) for i in range(5)], Deadline.after(clock, 0.05))
    # another transaction id, the same model input: one answer for both
    again = ladder.score_batch([make_tx(i, transaction_id=f"other-{i}") for i in range(5)],
                               Deadline.after(clock, 0.05))
    assert [s.tier for s in again] == [Tier.CACHE] * 3 + [Tier.PRIMARY] * 2  # 3 writes a batch
    clock.advance(2.0)
    ladder.score_batch([make_tx(0)], Deadline.after(clock, 0.05))
    assert ("revalidation_dropped", 1) in listener.events


def _config(**changes: Any) -> Any:
    from ladder_fakes import small_config

    return small_config(**changes)


def test_the_registry_judges_every_call_the_same_way() -> None:
    clock = FakeClock()
    seen: list[tuple[str, str, str]] = []
    breakers = Breakers({"x": BreakerConfig(minimum_calls=1, window_size=1)}, clock,
                        lambda *t: seen.append(t))

    def late(_t: float) -> int:
        clock.advance(1.0)
        return 1

    call = breakers.call("x", 0.5, late)
    assert not call.ok and call.reason == "timeout"
    assert breakers["x"].state is State.OPEN and seen == [("x", "closed", "open")]
    assert breakers.call("x", 0.5, lambda _t: 1).reason == "breaker_open"
    assert event_features([make_tx(0)]).shape == (1, 4)
