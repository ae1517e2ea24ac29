"""The fast load generator: determinism, cardinality, skew, fraud labels, the history window."""

from __future__ import annotations

import numpy as np
import pytest

from scorers.features.online import (
    CUSTOMER_SPAN_DAYS,
    TERMINAL_DELAY_DAYS,
    TERMINAL_SPAN_DAYS,
)
from scorers.lab.sim import SCENARIOS, to_transactions
from scorers.lab.sim.convert import to_payloads
from scorers.lab.sim.load import WARM_HISTORY_DAYS, LoadConfig, generate_load, top_share
from topics.codec import decode_transaction, encode_transaction

CFG = LoadConfig(n_customers=20_000, n_terminals=2_000)
DAY_S = 86_400


@pytest.fixture(scope="module")
def big() -> object:
    return generate_load(200_000, CFG, seed=3).live


def test_same_seed_same_events_other_seed_other_events() -> None:
    a, b, c = (generate_load(5_000, CFG, s, end_s=1.8e9).live for s in (1, 1, 2))
    for name in ("event_time_s", "customer", "terminal", "amount", "scenario", "channel"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.customer, c.customer)


def test_exact_count_time_order_and_window() -> None:
    end_s = 1.8e9
    live = generate_load(7_777, CFG, 0, end_s=end_s).live
    assert len(live) == 7_777
    assert np.all(np.diff(live.event_time_s) >= 0)
    assert live.event_time_s.min() >= end_s - DAY_S - 1 and live.event_time_s.max() < end_s
    assert np.all(live.amount > 0)


def test_cardinality_and_skew(big) -> None:  # type: ignore[no-untyped-def]
    assert np.unique(big.customer).size > 0.8 * CFG.n_customers
    assert np.unique(big.terminal).size > 0.95 * CFG.n_terminals
    assert big.customer.max() < CFG.n_customers and big.terminal.max() < CFG.n_terminals
    # skewed: the top 1% of customers and terminals carry far more than 1% ...
    assert 0.04 < top_share(big.customer) < 0.5
    assert 0.03 < top_share(big.terminal) < 0.5
    # ... and flat when asked (the simulator's U(0, 4) rates only)
    flat = generate_load(200_000, LoadConfig(n_customers=20_000, n_terminals=2_000,
                                             customer_skew=0, terminal_skew=0), 3).live
    assert top_share(flat.customer) < top_share(big.customer)
    assert top_share(flat.terminal) < 0.04


def test_fraud_scenarios_at_the_handbook_rates(big) -> None:  # type: ignore[no-untyped-def]
    share = {name: float((big.scenario == i).mean()) for i, name in enumerate(SCENARIOS)}
    assert 0.0003 < share["amount"] < 0.0012
    assert 0.003 < share["terminal"] < 0.009
    assert 0.0015 < share["customer"] < 0.0050
    assert 0.0005 < share["cnp_takeover"] < 0.0030
    assert 0.006 < big.is_fraud.mean() < 0.02
    np.testing.assert_array_equal(big.is_fraud, big.scenario > 0)
    assert not np.any((big.amount > 220.01) & ~big.is_fraud)


def test_rows_are_valid_transactions_and_payloads_round_trip() -> None:
    live = generate_load(2_000, CFG, 5, end_s=1.8e9).live
    txs = to_transactions(live, id_prefix="lg")
    keys, values = to_payloads(live, 0, len(live), "lg")
    assert [k.decode() for k in keys] == [t.transaction_id for t in txs]
    for tx, value in zip(txs, values, strict=True):
        assert tx.is_complete
        assert decode_transaction(value) == tx
        assert decode_transaction(encode_transaction(tx)) == tx
    _, stamped = to_payloads(live, 10, 20, "lg", event_time_s=1.9e9)
    assert len(stamped) == 10
    assert all(decode_transaction(v).event_time_s == 1.9e9 for v in stamped)


def test_history_only_when_asked_and_only_for_live_customers() -> None:
    assert len(generate_load(3_000, CFG, 1).history) == 0
    load = generate_load(3_000, CFG, 1, history_days=WARM_HISTORY_DAYS, end_s=1.8e9)
    hist, live = load.history, load.live
    assert len(live) == 3_000 and len(hist) > 0
    assert set(np.unique(hist.customer).tolist()) <= set(np.unique(live.customer).tolist())
    assert hist.event_time_s.max() <= live.event_time_s.min()
    span_days = (live.event_time_s.min() - hist.event_time_s.min()) / DAY_S
    assert span_days > WARM_HISTORY_DAYS - 1.5
    # history rate per day about the live rate when (nearly) every customer appears
    dense = generate_load(20_000, LoadConfig(n_customers=1_000, n_terminals=500, customer_skew=0),
                          1, history_days=WARM_HISTORY_DAYS)
    per_day = len(dense.history) / WARM_HISTORY_DAYS
    assert 0.85 * 20_000 < per_day < 1.1 * 20_000


def test_the_history_window_covers_the_online_features() -> None:
    # customer windows look back CUSTOMER_SPAN_DAYS days, terminal windows end
    # TERMINAL_DELAY_DAYS days back and reach TERMINAL_SPAN_DAYS days further
    assert WARM_HISTORY_DAYS >= CUSTOMER_SPAN_DAYS
    assert WARM_HISTORY_DAYS >= TERMINAL_DELAY_DAYS + TERMINAL_SPAN_DAYS
    assert WARM_HISTORY_DAYS <= TERMINAL_DELAY_DAYS + TERMINAL_SPAN_DAYS + 1  # no more than needed


def test_uniform_placement_reaches_all_terminals() -> None:
    cfg = LoadConfig(n_customers=5_000, n_terminals=1_000, placement="uniform", terminal_skew=0)
    live = generate_load(50_000, cfg, 2).live
    assert np.unique(live.terminal).size > 990
