"""The monitor's record handling and `evaluate-live`'s table, without a broker."""

from __future__ import annotations

import json

import pytest

from stream_app.metrics import Metrics, QualityMetrics
from stream_app.quality.join import MemoryJoinStore
from stream_app.quality.live_eval import (
    Card,
    evaluate_live,
    first_labels,
    first_scores,
    markdown_table,
    summary,
)
from stream_app.quality.monitor import QualityMonitor, RawRecord
from topics.codec import encode_label, encode_score
from topics.schemas import Action, Label, LabelKind, Score


def score(tx: str, tier: str = "primary", value: float = 0.5, action: Action = Action.ALLOW,
          replay_id: str | None = None) -> Score:
    return Score(tx, value, action, False, tier, f"{tier}-v1", 0.9, (), 0.01, 0.0, replay_id)


def fam(qm: QualityMetrics, name: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for metric in (qm._labelled, qm._monitored, qm._records):
        for f in metric.collect():
            for smp in f.samples:
                if smp.name == name and smp.value:
                    out[tuple(smp.labels.values())] = smp.value
    return out


def test_monitor_decodes_skips_replays_and_counts_bad_records() -> None:
    qm = QualityMetrics(Metrics().registry)
    mon = QualityMonitor(MemoryJoinStore(), qm, "p.scores", "p.labels")
    recs = [
        RawRecord("p.scores", 0, 0, encode_score(score("a", action=Action.BLOCK))),
        RawRecord("p.scores", 0, 1, encode_score(score("b", replay_id="r1"))),
        RawRecord("p.scores", 0, 2, b"not json"),
        RawRecord("p.labels", 1, 0, encode_label(Label("a", LabelKind.FRAUD, 1.7e9))),
        RawRecord("p.labels", 1, 1, b"{}"),
    ]
    mon.handle(recs)
    assert fam(qm, "rung_labelled_scores_total") == {("primary", "primary-v1", "tp"): 1}
    assert fam(qm, "rung_monitored_scores_total") == {("primary", "primary-v1", "alert"): 1}
    assert fam(qm, "rung_quality_records_total") == {
        ("scores", "pending"): 1, ("scores", "skipped"): 1, ("scores", "invalid"): 1,
        ("labels", "joined"): 1, ("labels", "invalid"): 1}


def test_evaluate_live_rows_per_tier_and_all() -> None:
    scores = first_scores(encode_score(s) for s in [
        score("p1", value=0.9), score("p2", value=0.8), score("p3", value=0.1),
        score("p4", value=0.2), score("f1", "fallback", 0.7), score("f2", "fallback", 0.3),
        score("u", value=0.99), score("p1", value=0.0),  # unlabelled; a second p1 ignored
        score("r", value=0.9, replay_id="r1"),
    ])
    labels = first_labels(encode_label(Label(t, k, 1.7e9)) for t, k in [
        ("p1", LabelKind.FRAUD), ("p2", LabelKind.GENUINE), ("p3", LabelKind.GENUINE),
        ("p4", LabelKind.CHARGEBACK), ("f1", LabelKind.GENUINE), ("f2", LabelKind.GENUINE),
        ("gone", LabelKind.FRAUD)])
    cards = {t: Card(f"c-{t}", 0) for t in ("p1", "p2", "p3", "p4")}
    ev = evaluate_live(scores, labels, cards)
    rows = {r.tier: r for r in ev.rows}
    assert list(rows) == ["fallback", "primary", "all"]
    # primary: frauds at 0.9 and 0.2, genuine at 0.8 and 0.1 -> 3 of 4 pairs ordered right
    assert rows["primary"].auc_roc == pytest.approx(0.75)
    assert rows["primary"].average_precision == pytest.approx((1.0 + 2 / 3) / 2)
    assert rows["primary"].card_precision_at_100 == pytest.approx(2 / 100)
    assert (rows["primary"].labelled, rows["primary"].frauds) == (4, 2)
    assert (rows["fallback"].labelled, rows["fallback"].frauds) == (2, 0)
    assert rows["all"].labelled == 6
    assert (ev.unlabelled_scores, ev.labels_without_score) == (1, 1)
    table = markdown_table(ev)
    assert table.splitlines()[0].startswith("| tier | AUC ROC | average precision | "
                                            "Card Precision@100 |")
    assert "| fallback | n/a | n/a | n/a | 2 | 0 |" in table
    out = json.loads(json.dumps(summary(ev)))
    assert out["tiers"]["primary"]["auc_roc"] == 0.75
    assert out["tiers"]["fallback"]["auc_roc"] is None


def test_unlabelled_as_genuine_counts_every_score() -> None:
    scores = {t: score(t, value=v) for t, v in [("a", 0.9), ("b", 0.1)]}
    labels = {"a": Label("a", LabelKind.FRAUD, 1.0)}
    assert evaluate_live(scores, labels).rows[0].labelled == 1
    ev = evaluate_live(scores, labels, unlabelled_as_genuine=True)
    assert ev.rows[0].labelled == 2 and ev.rows[0].auc_roc == 1.0
