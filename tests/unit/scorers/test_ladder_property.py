"""Property: random batches, random injected faults → exactly one valid result per
record, in order, and none later than the deadline plus the fallback's cost."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ladder_fakes import (
    FakeStore,
    VirtualTimeExecutor,
    build,
    fallback_model,
    make_tx,
    primary_model,
)
from test_ladder_cache import FlakyCache

from scorers.clock import FakeClock
from scorers.deadline import Deadline
from scorers.faults import FaultSwitch, FaultyModel
from topics.schemas import Action, Tier

FALLBACK_COST_S = 0.002
DEADLINE_S = 0.05
FIELDS = ("customer_id", "terminal_id", "amount", "merchant_category", "channel",
          "account_age_days", "is_international", "event_time_s")

record = st.tuples(st.integers(0, 10_000), st.lists(st.sampled_from(FIELDS), max_size=3),
                   st.sampled_from([5.0, 900.0, 7000.0]), st.sampled_from(["5411", "7995"]))
faults = st.fixed_dictionaries({
    "latency_s": st.sampled_from([0.0, 0.01, 0.2]),
    "error": st.booleans(), "cuda_error": st.booleans(), "oom": st.booleans(),
    "nan_fraction": st.sampled_from([0.0, 0.3]),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(record, max_size=40), fault=faults, rare=st.booleans(),
       cache_down=st.booleans(), store_down=st.booleans(), fallback_broken=st.booleans(),
       spent_before_s=st.sampled_from([0.0, 0.02, 0.049, 0.06]))
def test_one_valid_answer_per_record_within_the_deadline(
        records: list[tuple[int, list[str], float, str]], fault: dict[str, object], rare: bool,
        cache_down: bool, store_down: bool, fallback_broken: bool, spent_before_s: float) -> None:
    clock = FakeClock()
    executor = VirtualTimeExecutor(clock)
    switch = FaultSwitch()
    if rare:  # one fault at a time is the common case; all at once is the rare one
        switch.set(**fault)
    else:
        switch.set(latency_s=fault["latency_s"])
    cache, store = FlakyCache(clock), FakeStore(clock)
    cache.down, store.down = cache_down, store_down

    def fallback_fn(x):  # type: ignore[no-untyped-def]
        clock.advance(FALLBACK_COST_S)
        if fallback_broken:
            raise RuntimeError("fallback broken")
        return 0.2 + 0.0 * x[:, 0]

    ladder = build(clock, primary=FaultyModel(primary_model(), switch, sleep=executor.sleep),
                   fallback=fallback_model(fn=fallback_fn), cache=cache, feature_store=store,
                   executor=executor)
    txs = [replace(make_tx(i, amount=amount, merchant_category=mcc), **dict.fromkeys(drop))
           for i, drop, amount, mcc in records]
    deadline = Deadline.after(clock, DEADLINE_S)
    clock.advance(spent_before_s)  # time already spent before the ladder sees the batch
    for _ in range(2):  # the second pass meets cache entries and breaker state of the first
        start = clock.monotonic()
        scores = ladder.score_batch(txs, deadline)
        assert [s.transaction_id for s in scores] == [t.transaction_id for t in txs]
        for s in scores:
            assert s.tier in Tier and s.action in Action
            assert 0.0 <= s.score <= 1.0 and 0.0 <= s.confidence <= 1.0
            assert s.latency_s <= max(0.0, deadline.expires_at_s - start) + FALLBACK_COST_S + 1e-9
            if s.tier is Tier.DEFAULT:
                assert s.action is Action.ALLOW and s.flag_for_review and s.confidence == 0.0
        deadline = Deadline.after(clock, DEADLINE_S)
