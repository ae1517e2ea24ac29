"""Simulated labels: one per fraud, a sample of genuine ones, delays within the features'
label delay, label-time order, determinism, and the codec round trip."""

from __future__ import annotations

import numpy as np
import pytest

from scorers.features.online import TERMINAL_DELAY_DAYS
from scorers.lab.sim import SimConfig, SimData, simulate, to_transactions
from scorers.lab.sim.convert import to_labels
from scorers.lab.sim.labels import (
    LABEL_KINDS,
    MAX_LABEL_DELAY_S,
    Delay,
    LabelConfig,
    SimLabels,
    simulate_labels,
)
from scorers.lab.sim.load import WARM_HISTORY_DAYS, LoadConfig, generate_load
from topics.codec import decode_label, encode_label
from topics.schemas import LabelKind

DAY_S = 86_400
CFG = LabelConfig()


@pytest.fixture(scope="module")
def data() -> SimData:
    return simulate(SimConfig(n_customers=1500, n_terminals=3000, n_days=40), seed=5)


@pytest.fixture(scope="module")
def labels(data: SimData) -> SimLabels:
    return simulate_labels(data, seed=5)


def _delays(data: SimData, labels: SimLabels) -> np.ndarray:
    return labels.labelled_at_s - data.event_time_s[labels.row]


def test_every_fraud_is_labelled_exactly_once_as_fraud(data: SimData, labels: SimLabels) -> None:
    fraud_rows = labels.row[labels.is_fraud]
    assert np.array_equal(np.sort(fraud_rows), np.flatnonzero(data.is_fraud))
    assert np.unique(labels.row).size == len(labels)  # at most one label per transaction
    kinds = {LABEL_KINDS[k] for k in labels.kind[labels.is_fraud].tolist()}
    assert kinds == {LabelKind.FRAUD, LabelKind.CHARGEBACK}
    assert not data.is_fraud[labels.row[~labels.is_fraud]].any()  # genuine only on genuine
    chargeback = np.mean(labels.kind[labels.is_fraud] == LABEL_KINDS.index(LabelKind.CHARGEBACK))
    assert 0.2 < chargeback < 0.3
    genuine_share = (~labels.is_fraud).sum() / (~data.is_fraud).sum()
    assert 0.015 < genuine_share < 0.025


def test_delays_stay_within_the_features_label_delay(data: SimData, labels: SimLabels) -> None:
    delay = _delays(data, labels)
    assert delay.min() >= CFG.min_delay_s and delay.max() <= CFG.max_delay_s
    assert CFG.max_delay_s < MAX_LABEL_DELAY_S == TERMINAL_DELAY_DAYS * DAY_S
    # the offline features' assumption: a fraud of UTC day X is known before day X + 8
    day = data.event_time_s[labels.row] // DAY_S
    assert np.all(labels.labelled_at_s < (day + TERMINAL_DELAY_DAYS + 1) * DAY_S)


def test_delay_distributions_have_their_documented_medians(data: SimData,
                                                           labels: SimLabels) -> None:
    delay = _delays(data, labels)
    for kind, spec in ((LabelKind.FRAUD, CFG.fraud_delay),
                       (LabelKind.CHARGEBACK, CFG.chargeback_delay),
                       (LabelKind.GENUINE, CFG.genuine_delay)):
        median = float(np.median(delay[labels.kind == LABEL_KINDS.index(kind)]))
        assert 0.8 * spec.median_s < median < 1.25 * spec.median_s, kind


def test_labels_are_in_label_time_order(labels: SimLabels) -> None:
    assert len(labels) > 0 and np.all(np.diff(labels.labelled_at_s) >= 0)


def test_same_seed_same_labels_other_seed_other_labels(data: SimData,
                                                       labels: SimLabels) -> None:
    again, other = simulate_labels(data, seed=5), simulate_labels(data, seed=6)
    for name in ("row", "kind", "labelled_at_s"):
        np.testing.assert_array_equal(getattr(again, name), getattr(labels, name))
    assert not np.array_equal(other.labelled_at_s, labels.labelled_at_s)


def test_labels_round_trip_through_the_codec_and_match_the_transactions(
        data: SimData, labels: SimLabels) -> None:
    sample = labels.take(np.arange(0, len(labels), 37))
    out = to_labels(data, sample, id_prefix="p", time_offset_s=100.0)
    txs = {t.transaction_id: t for t in to_transactions(data, "p", 100.0, rows=sample.row)}
    assert len(out) == len(sample)
    for label in out:
        assert decode_label(encode_label(label)) == label
        tx = txs[label.transaction_id]
        assert label.terminal_id == tx.terminal_id and label.event_time_s == tx.event_time_s
        assert label.event_time_s is not None and label.labelled_at_s > label.event_time_s


def test_the_fast_generator_labels_history_and_live() -> None:
    cfg = LoadConfig(n_customers=3000, n_terminals=1000)
    a = generate_load(4000, cfg, 2, history_days=WARM_HISTORY_DAYS, end_s=1.8e9)
    b = generate_load(4000, cfg, 2, history_days=WARM_HISTORY_DAYS, end_s=1.8e9)
    np.testing.assert_array_equal(a.live_labels.labelled_at_s, b.live_labels.labelled_at_s)
    for part, lab in ((a.history, a.history_labels), (a.live, a.live_labels)):
        assert np.array_equal(np.sort(lab.row[lab.is_fraud]), np.flatnonzero(part.is_fraud))
        assert np.all(np.diff(lab.labelled_at_s) >= 0)
        delay = _delays(part, lab)
        assert delay.min() >= CFG.min_delay_s and delay.max() <= CFG.max_delay_s
    # some history labels only arrive during the live day
    assert np.any(a.history_labels.labelled_at_s > a.live.event_time_s[0])


def test_label_delays_beyond_the_features_delay_are_refused() -> None:
    with pytest.raises(ValueError, match="7-day label delay"):
        LabelConfig(max_delay_s=MAX_LABEL_DELAY_S + 1)
    with pytest.raises(ValueError, match="shares"):
        LabelConfig(genuine_share=1.5)
    small = simulate(SimConfig(n_customers=50, n_terminals=100, n_days=5))
    assert len(simulate_labels(small.take(np.zeros(0, dtype=np.int64)))) == 0
    with pytest.raises(ValueError, match="hardly ever"):
        simulate_labels(small, LabelConfig(fraud_delay=Delay(1e9, 0.01)))
