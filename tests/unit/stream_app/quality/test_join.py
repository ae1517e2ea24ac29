"""The label ⨝ score join without a broker: the in-memory store's contract, its bounds,
and the per-(tier, model_version) counts."""

from __future__ import annotations

import pytest

from stream_app.metrics import Metrics, QualityMetrics
from stream_app.quality.join import LabelScoreJoin, MemoryJoinStore
from stream_app.quality.monitor import MetricsSink
from stream_app.quality.outcomes import OutcomeCounts, outcome
from tests.quality_contract import JoinStoreContract, lb, s
from topics.schemas import Action, Label, LabelKind, Score


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestMemoryStoreContract(JoinStoreContract):
    @pytest.fixture
    def store(self) -> MemoryJoinStore:
        return MemoryJoinStore(ttl_s=60.0, max_entries=10_000)


def test_ttl_forgets_a_side_that_waited_too_long() -> None:
    clock = FakeClock()
    store = MemoryJoinStore(ttl_s=60.0, clock=clock)
    store.offer([s("a"), s("b")])
    clock.now += 59.0
    assert store.offer([lb("a")])[0].status == "joined"
    clock.now += 1.0  # b stored 60 s ago: gone
    assert store.offer([lb("b")])[0].status == "pending"
    assert store.expired == 1
    clock.now += 61.0  # the joined marker of a and the pending label b expire too
    assert store.offer([s("a")])[0].status == "pending"
    assert len(store) == 1


def test_entries_are_bounded_oldest_first() -> None:
    store = MemoryJoinStore(ttl_s=60.0, max_entries=3)
    store.offer([s("a"), s("b"), s("c"), s("d")])
    assert len(store) == 3 and store.evicted == 1
    assert store.offer([lb("a")])[0].status == "pending"  # evicted: no join
    assert store.offer([lb("d")])[0].status == "joined"


def test_outcome_table() -> None:
    assert [outcome(a, f) for a, f in [(True, True), (True, False), (False, True),
                                        (False, False)]] == ["tp", "fp", "fn", "tn"]


def test_precision_recall_alert_rate() -> None:
    c = OutcomeCounts(tp=6, fp=2, fn=4, tn=88)
    assert (c.labelled, c.frauds, c.alerts) == (100, 10, 8)
    assert c.precision == pytest.approx(0.75)
    assert c.recall == pytest.approx(0.6)
    assert c.alert_rate == pytest.approx(0.08)
    empty = OutcomeCounts()
    assert (empty.precision, empty.recall, empty.alert_rate) == (None, None, None)


def score(tx: str, tier: str, version: str, action: Action, flag: bool = False,
          value: float = 0.5) -> Score:
    return Score(tx, value, action, flag, tier, version, 0.9, (), 0.01, 0.0)


def label(tx: str, kind: LabelKind) -> Label:
    return Label(tx, kind, 1.0)


def test_counts_per_tier_and_model_version_in_any_arrival_order() -> None:
    qm = QualityMetrics(Metrics().registry)
    join = LabelScoreJoin(MemoryJoinStore(), MetricsSink(qm))
    # labels first for half of them, scores first for the other half
    join.add_labels([label("p1", LabelKind.FRAUD), label("p2", LabelKind.GENUINE)])
    join.add_scores([
        score("p1", "primary", "p-v1", Action.BLOCK),  # tp
        score("p2", "primary", "p-v1", Action.ALLOW, flag=True),  # fp (flagged)
        score("p3", "primary", "p-v1", Action.ALLOW),  # fn
        score("f1", "fallback", "fb-v1", Action.REVIEW),  # fp
        score("f2", "fallback", "fb-v1", Action.ALLOW),  # tn
        score("x", "primary", "p-v1", Action.BLOCK),  # never labelled
    ])
    join.add_labels([label("p3", LabelKind.CHARGEBACK), label("f1", LabelKind.GENUINE),
                     label("f2", LabelKind.GENUINE), label("p1", LabelKind.FRAUD)])  # p1 again
    join.add_scores([score("p1", "primary", "p-v1", Action.BLOCK)])  # redelivered
    p = join.counts[("primary", "p-v1")]
    f = join.counts[("fallback", "fb-v1")]
    assert (p.tp, p.fp, p.fn, p.tn) == (1, 1, 1, 0)
    assert (f.tp, f.fp, f.fn, f.tn) == (0, 1, 0, 1)
    got = {(smp.labels["tier"], smp.labels["outcome"]): smp.value
           for fam in qm._labelled.collect() for smp in fam.samples
           if smp.name == "rung_labelled_scores_total"}
    assert got == {("primary", "tp"): 1, ("primary", "fp"): 1, ("primary", "fn"): 1,
                   ("fallback", "fp"): 1, ("fallback", "tn"): 1}
