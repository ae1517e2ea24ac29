"""Training/serving agreement of the online aggregates, and their window semantics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from feature_agreement import offline, online, sequence

from scorers.feature_store import InMemoryFeatureStore
from scorers.features import ONLINE_FEATURE_NAMES
from topics.schemas import Transaction

COL = {name: i for i, name in enumerate(ONLINE_FEATURE_NAMES)}
DAY = 86_400.0


def tx(i: int, t_s: float, customer: str = "c1", terminal: str = "t1",
       amount: float = 10.0) -> Transaction:
    return Transaction(f"x{i}", t_s, customer, terminal, amount, "EUR", "5411", False, True,
                       400, "pos")


def test_offline_and_in_memory_store_agree_exactly() -> None:
    data = sequence()
    expected = offline(data)
    assert expected[:, COL["terminal_risk_30d_delay7"]].max() > 0  # the labels matter
    np.testing.assert_array_equal(online(data, InMemoryFeatureStore()), expected)


def test_agreement_does_not_depend_on_batch_sizes() -> None:
    data = sequence(seed=5)
    expected = offline(data)
    np.testing.assert_array_equal(online(data, InMemoryFeatureStore(), seed=1, max_batch=2),
                                  expected)
    np.testing.assert_array_equal(online(data, InMemoryFeatureStore(), seed=2, max_batch=400),
                                  expected)


def test_an_event_never_sees_itself_but_sees_earlier_events_of_its_batch() -> None:
    store = InMemoryFeatureStore()
    batch = [tx(0, 10 * DAY + 100, amount=10.0), tx(1, 10 * DAY + 200, amount=30.0)]
    features, _ = store.fetch(batch, 1.0)
    assert features[0, COL["customer_nb_tx_1d"]] == 0
    assert features[1, COL["customer_nb_tx_1d"]] == 1
    assert features[1, COL["customer_mean_amount_1d"]] == pytest.approx(10.0)
    assert features[1, COL["amount_over_customer_mean_7d"]] == pytest.approx(3.0)
    store.update(batch, 1.0)
    later, _ = store.fetch([tx(2, 11 * DAY + 5)], 1.0)
    assert later[0, COL["customer_nb_tx_1d"]] == 0  # yesterday is outside the 1-day window
    assert later[0, COL["customer_nb_tx_7d"]] == 2
    assert later[0, COL["customer_mean_amount_7d"]] == pytest.approx(20.0)


def test_terminal_windows_are_delayed_by_seven_days() -> None:
    store = InMemoryFeatureStore()
    past = [tx(0, 10 * DAY + 100), tx(1, 10 * DAY + 200)]
    store.update(past, 1.0)
    store.record_labels(past, [True, False], 1.0)
    for day, expected_n in ((17, 0), (18, 2), (40, 2), (48, 0)):
        features, _ = store.fetch([tx(9, day * DAY + 50, customer="other")], 1.0)
        assert features[0, COL["terminal_nb_tx_30d_delay7"]] == expected_n, day
    features, _ = store.fetch([tx(9, 18 * DAY + 50, customer="other")], 1.0)
    assert features[0, COL["terminal_nb_tx_1d_delay7"]] == 2
    assert features[0, COL["terminal_risk_1d_delay7"]] == pytest.approx(0.5)


def test_rows_missing_a_key_are_unavailable_and_not_stored() -> None:
    store = InMemoryFeatureStore()
    batch = [tx(0, 5 * DAY), dataclasses.replace(tx(1, 5 * DAY + 1), customer_id=None),
             dataclasses.replace(tx(2, 5 * DAY + 2), event_time_s=None)]
    features, available = store.fetch(batch, 1.0)
    assert available.tolist() == [True, False, False]
    assert not features[1:].any()
    store.update(batch, 1.0)
    after, _ = store.fetch([tx(3, 5 * DAY + 3)], 1.0)
    assert after[0, COL["customer_nb_tx_1d"]] == 1


def test_record_labels_checks_lengths() -> None:
    with pytest.raises(ValueError):
        InMemoryFeatureStore().record_labels([tx(0, DAY)], [True, False], 1.0)
