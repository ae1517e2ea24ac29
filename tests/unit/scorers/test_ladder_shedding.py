"""Shed (late) records: only the spec's cheap tiers answer them, tagged and counted."""

from __future__ import annotations

from typing import Any

from ladder_fakes import FakeStore, RecordingListener, build, make_tx

from scorers.clock import FakeClock
from scorers.deadline import Deadline
from topics.schemas import Tier


class ShedListener(RecordingListener):
    def on_shed(self, reason: str, count: int) -> None:
        self.events.append(("shed", reason, count))


class CountingStore(FakeStore):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.fetched: list[int] = []

    def fetch(self, txs: Any, timeout_s: float) -> Any:
        self.fetched.append(len(txs))
        return super().fetch(txs, timeout_s)


def test_shed_records_skip_the_primary_and_carry_their_reason_first() -> None:
    clock = FakeClock()
    listener, store = ShedListener(), CountingStore(clock)
    ladder = build(clock, listener=listener, feature_store=store)
    txs = [make_tx(i) for i in range(6)]
    shed = ["", "late", "", "overload", "late", ""]
    scores = ladder.score_batch(txs, Deadline.after(clock, 0.05), shed)
    assert [s.tier for s in scores] == [Tier.PRIMARY, Tier.FALLBACK, Tier.PRIMARY,
                                        Tier.FALLBACK, Tier.FALLBACK, Tier.PRIMARY]
    assert [s.reasons[:1] for s in scores] == [(), ("late",), (), ("overload",), ("late",), ()]
    assert store.fetched == [3]  # online features fetched for the primary's rows only
    assert sorted(e for e in listener.events if e[0] == "shed") == [
        ("shed", "late", 2), ("shed", "overload", 1)]


def test_without_the_fallback_shed_records_go_to_the_rules() -> None:
    clock = FakeClock()
    ladder = build(clock, fallback_unavailable_reason="integrity")
    txs = [make_tx(i) for i in range(3)]
    scores = ladder.score_batch(txs, Deadline.after(clock, 0.05), ["late", "late", ""])
    assert [s.tier for s in scores] == [Tier.RULES, Tier.RULES, Tier.PRIMARY]
    assert scores[0].reasons[0] == "late"


def test_nothing_shed_is_the_usual_ladder() -> None:
    clock = FakeClock()
    listener = ShedListener()
    ladder = build(clock, listener=listener)
    txs = [make_tx(i) for i in range(4)]
    scores = ladder.score_batch(txs, Deadline.after(clock, 0.05), [""] * 4)
    assert {s.tier for s in scores} == {Tier.PRIMARY}
    assert not [e for e in listener.events if e[0] == "shed"]


def test_the_late_tiers_are_data_in_the_spec() -> None:
    clock = FakeClock()
    ladder = build(clock)
    assert ladder.spec.late_tiers == frozenset({"fallback", "rules"})
