"""Canary by key: stable routing, the rollback rule (fake clock), and the primary tier
answering each record with the model its slot routes it to."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from ladder_fakes import (
    PRIMARY_NAMES,
    FnModel,
    RecordingListener,
    VirtualTimeExecutor,
    build,
    make_tx,
)

from scorers.clock import FakeClock
from scorers.deadline import Deadline
from scorers.models.canary import Counts, RollbackBounds, RollbackRule, stable_bucket
from scorers.models.slot import Canary, ModelSlot, ModelSwitch
from topics.schemas import Tier


# -- routing -------------------------------------------------------------------------------------
def test_stable_bucket_is_fixed_by_the_key_alone() -> None:
    # blake2b, not Python's salted hash(): the same in every process and every release
    digest = hashlib.blake2b(b"customer-42", digest_size=8).hexdigest()
    assert stable_bucket("customer-42") == int(digest, 16) / 2**64
    assert stable_bucket("customer-42") == pytest.approx(0.20265, abs=1e-5)  # pinned
    assert stable_bucket("customer-42") == stable_bucket("customer-42")
    assert 0.0 <= stable_bucket("") < 1.0


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.2, 0.5])
def test_the_configured_fraction_of_customers_goes_to_the_candidate(fraction: float) -> None:
    customers = [f"C{i:07d}" for i in range(100_000)]
    share = sum(stable_bucket(c) < fraction for c in customers) / len(customers)
    assert abs(share - fraction) < 0.01 * max(fraction, 0.1)


def test_one_customer_sees_one_model_and_growing_the_fraction_only_adds() -> None:
    cand = FnModel("cand", PRIMARY_NAMES)
    champ = FnModel("champ", PRIMARY_NAMES)
    txs = [make_tx(i, customer_id=f"c{i % 500}") for i in range(5_000)]
    small = ModelSlot(champ, Canary(cand, 0.1)).candidate_mask(txs)
    big = ModelSlot(champ, Canary(cand, 0.3)).candidate_mask(txs)
    by_customer: dict[str | None, set[bool]] = {}
    for tx, on in zip(txs, small.tolist(), strict=True):
        by_customer.setdefault(tx.customer_id, set()).add(on)
    assert all(len(sides) == 1 for sides in by_customer.values())
    assert not (small & ~big).any() and big.sum() > small.sum() > 0
    missing = [make_tx(1, customer_id=None)]
    assert not ModelSlot(champ, Canary(cand, 1.0)).candidate_mask(missing).any()
    with pytest.raises(ValueError):
        Canary(cand, 0.1, key="amount")


# -- the rollback rule ---------------------------------------------------------------------------
def test_rule_waits_for_min_records_then_trips_on_error_rate() -> None:
    clock = FakeClock()
    rule = RollbackRule(RollbackBounds(min_records=100, max_error_rate=0.05, window_s=60))
    rule.observe(clock.monotonic(), Counts(900, 900, 9, 0), Counts(90, 70, 1, 20))
    assert not rule.evaluate(clock.monotonic()).trip  # 90 < 100 candidate rows
    clock.advance(1)
    rule.observe(clock.monotonic(), Counts(900, 900, 9, 0), Counts(20, 20, 0, 0))
    v = rule.evaluate(clock.monotonic())
    assert v.trip and v.reason == "error_rate" and "20/110" in v.detail


def test_rule_trips_on_review_rate_against_the_champion() -> None:
    clock = FakeClock()
    rule = RollbackRule(RollbackBounds(min_records=100, max_review_rate_delta=0.05))
    rule.observe(clock.monotonic(), Counts(1000, 1000, 20, 0), Counts(200, 200, 14, 0))
    assert not rule.evaluate(clock.monotonic()).trip  # 7% vs 2%: within 5 points
    rule.observe(clock.monotonic(), Counts(0, 0, 0, 0), Counts(100, 100, 16, 0))
    v = rule.evaluate(clock.monotonic())  # 30/300 = 10% vs 2%
    assert v.trip and v.reason == "review_rate"


def test_old_batches_leave_the_window() -> None:
    clock = FakeClock()
    rule = RollbackRule(RollbackBounds(min_records=100, max_error_rate=0.05, window_s=60))
    rule.observe(clock.monotonic(), Counts(1000, 1000, 0, 0), Counts(100, 50, 0, 50))
    clock.advance(61)
    rule.observe(clock.monotonic(), Counts(1000, 1000, 0, 0), Counts(150, 150, 0, 0))
    assert not rule.evaluate(clock.monotonic()).trip  # the bad batch is 61 s old
    assert rule.totals(clock.monotonic())[1].routed == 150


def test_rule_never_trips_on_a_quiet_candidate() -> None:
    rule = RollbackRule(RollbackBounds(min_records=1))
    rule.observe(0.0, Counts(10, 10, 10, 0), Counts())
    assert not rule.evaluate(0.0).trip


# -- the primary tier with a canary --------------------------------------------------------------
def ladder_with(clock: FakeClock, slot: ModelSlot, listener: RecordingListener | None = None):  # type: ignore[no-untyped-def]
    executor = VirtualTimeExecutor(clock)
    switch = ModelSwitch(slot)
    switch.stats.enabled = True
    ladder = build(clock, primary=slot.champion, executor=executor, primary_switch=switch,
                   listener=listener or RecordingListener())
    return ladder, switch


def score(ladder, clock: FakeClock, n: int = 400, offset: int = 0):  # type: ignore[no-untyped-def]
    txs = [make_tx(offset + i, customer_id=f"cust-{(offset + i) % 200}") for i in range(n)]
    return txs, ladder.score_batch(txs, Deadline.after(clock, 0.05))


def test_canary_rows_are_answered_by_the_candidate_and_say_so() -> None:
    clock = FakeClock()
    champ = FnModel("champ", PRIMARY_NAMES, fn=lambda x: np.full(len(x), 0.1))
    cand = FnModel("cand", PRIMARY_NAMES, fn=lambda x: np.full(len(x), 0.7))
    slot = ModelSlot(champ, Canary(cand, 0.25))
    listener = RecordingListener()
    ladder, switch = ladder_with(clock, slot, listener)
    txs, scores = score(ladder, clock)
    want = slot.candidate_mask(txs)
    assert {s.tier for s in scores} == {Tier.PRIMARY}
    assert [s.model_version == "cand" for s in scores] == want.tolist()
    assert all(s.score == pytest.approx(0.7 if on else 0.1) for s, on in zip(scores, want, strict=True))
    assert all(s.flag_for_review == on for s, on in zip(scores, want, strict=True))  # 0.7 >= 0.5
    n_cand = int(want.sum())
    assert 0 < n_cand < len(txs)
    assert ("tier", Tier.PRIMARY, "cand", n_cand) in listener.events
    stats = switch.stats.drain()
    assert stats["cand"].counts == Counts(n_cand, n_cand, n_cand, 0)
    assert stats["champ"].counts == Counts(400 - n_cand, 400 - n_cand, 0, 0)
    assert switch.stats.drain() == {}


def test_a_failing_candidate_sends_only_its_rows_down_and_is_counted() -> None:
    clock = FakeClock()
    champ = FnModel("champ", PRIMARY_NAMES, fn=lambda x: np.full(len(x), 0.1))

    def broken(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("candidate bug")
    slot = ModelSlot(champ, Canary(FnModel("cand", PRIMARY_NAMES, fn=broken), 0.25))
    ladder, switch = ladder_with(clock, slot)
    txs, scores = score(ladder, clock)
    want = slot.candidate_mask(txs)
    assert [s.tier == Tier.FALLBACK for s in scores] == want.tolist()
    assert all(s.model_version == "champ" for s, on in zip(scores, want, strict=True) if not on)
    stats = switch.stats.drain()
    assert stats["cand"].counts.failed == int(want.sum()) and stats["cand"].counts.answered == 0
    rule = RollbackRule(RollbackBounds(min_records=50))
    rule.observe(clock.monotonic(), stats["champ"].counts, stats["cand"].counts)
    assert rule.evaluate(clock.monotonic()).reason == "error_rate"


def test_a_published_slot_answers_from_the_next_batch_on() -> None:
    clock = FakeClock()
    v1 = FnModel("v1", PRIMARY_NAMES)
    ladder, switch = ladder_with(clock, ModelSlot(v1))
    _, first = score(ladder, clock)
    switch.publish(ModelSlot(FnModel("v2", PRIMARY_NAMES)))
    _, second = score(ladder, clock, offset=400)
    assert {s.model_version for s in first} == {"v1"}
    assert {s.model_version for s in second} == {"v2"}
    tier = ladder.tier(Tier.PRIMARY)
    assert tier.version == "v2" and tier.model is switch.slot.champion
    assert switch.generation == 1


def test_without_a_reader_the_stats_stay_empty() -> None:
    clock = FakeClock()
    switch = ModelSwitch(ModelSlot(FnModel("v1", PRIMARY_NAMES)))
    ladder = build(clock, primary=switch.slot.champion, primary_switch=switch)
    score(ladder, clock)
    assert switch.stats.drain() == {}
