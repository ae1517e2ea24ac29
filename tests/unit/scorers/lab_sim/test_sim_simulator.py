"""The simulator: determinism, the handbook's fraud scenarios and rung's extension."""

from __future__ import annotations

import numpy as np
import pytest

from scorers.lab.sim import SCENARIOS, SimConfig, SimData, simulate, to_transactions
from scorers.lab.sim.demo import demo_stream
from topics.schemas import CHANNELS, HIGH_RISK_MERCHANT_CATEGORIES, MERCHANT_CATEGORIES

SMALL = SimConfig(n_customers=300, n_terminals=600, n_days=20)
HIGH_RISK = np.array([m in HIGH_RISK_MERCHANT_CATEGORIES for m in MERCHANT_CATEGORIES])


@pytest.fixture(scope="module")
def handbook() -> SimData:
    return simulate(SimConfig(), seed=0)  # the handbook's 5000 x 10000 x 183 days


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b, c = simulate(SMALL, 7), simulate(SMALL, 7), simulate(SMALL, 8)
    for name in ("event_time_s", "customer", "terminal", "amount", "scenario", "channel"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert len(a) != len(c) or not np.array_equal(a.amount, c.amount)


def test_rows_are_in_event_time_order_within_the_period() -> None:
    d = simulate(SMALL, 1)
    assert np.all(np.diff(d.event_time_s) >= 0)
    assert d.event_time_s.min() >= SMALL.start_s
    assert d.event_time_s.max() < SMALL.start_s + SMALL.n_days * 86_400
    assert np.all(d.amount > 0)


def test_handbook_scenario_rates(handbook: SimData) -> None:
    n = len(handbook)
    assert 1_600_000 < n < 1_950_000  # handbook: about 1.75M transactions
    share = {name: float((handbook.scenario == i).sum()) / n for i, name in enumerate(SCENARIOS)}
    # steady state: 2 x 28 of 10000 terminals, 3 x 14 / 5000 customers x 1/3 of their rows
    assert 0.0004 < share["amount"] < 0.0009
    assert 0.0040 < share["terminal"] < 0.0065
    assert 0.0020 < share["customer"] < 0.0035
    handbook_share = share["amount"] + share["terminal"] + share["customer"]
    assert 0.0070 < handbook_share < 0.0100  # handbook: 0.84%
    assert 0.0008 < share["cnp_takeover"] < 0.0020
    np.testing.assert_array_equal(handbook.is_fraud, handbook.scenario > 0)


def test_every_amount_above_220_is_fraud(handbook: SimData) -> None:
    assert not np.any((handbook.amount > 220.01) & ~handbook.is_fraud)
    assert np.all(handbook.amount[handbook.scenario == 1] > 219.99)


def test_compromised_terminals_and_customers(handbook: SimData) -> None:
    s2 = handbook.scenario == 2
    day = handbook.day
    # a compromised terminal stays compromised: at most 28 + (overlaps) distinct days per terminal
    terms, counts = np.unique(handbook.terminal[s2], return_counts=True)
    assert terms.size > 0 and counts.min() >= 1
    first, last = {}, {}
    for t, d in zip(handbook.terminal[s2].tolist(), day[s2].tolist(), strict=True):
        first.setdefault(t, d)
        last[t] = d
    assert max(last[t] - first[t] for t in first) >= 20
    # scenario 3 multiplies amounts by 5: much larger than the customer's usual amounts
    s3 = handbook.scenario == 3
    assert np.median(handbook.amount[s3]) > 3 * np.median(handbook.amount[handbook.scenario == 0])


def test_extension_fields_carry_signal(handbook: SimData) -> None:
    legit, s4 = handbook.scenario == 0, handbook.scenario == 4
    assert HIGH_RISK[handbook.merchant_category[s4]].all()
    assert 0.05 < HIGH_RISK[handbook.merchant_category[legit]].mean() < 0.15
    remote = np.isin(handbook.channel, [CHANNELS.index("ecom"), CHANNELS.index("mobile")])
    assert remote[s4].all()
    ecom = handbook.channel == CHANNELS.index("ecom")
    assert ecom[handbook.scenario == 3].mean() > ecom[legit].mean() + 0.2
    no_history = handbook.is_international & ~handbook.has_international_history
    assert no_history[s4].mean() > 10 * no_history[legit].mean()
    young = handbook.account_age_days < 90
    assert young[s4].mean() > 2 * young[legit].mean()


def test_to_transactions_maps_every_field() -> None:
    d = simulate(SMALL, 2)
    txs = to_transactions(d, id_prefix="t", time_offset_s=10.0, rows=np.array([0, 5]))
    assert [t.transaction_id for t in txs] == ["t-0", "t-5"]
    tx = txs[1]
    assert tx.event_time_s == d.event_time_s[5] + 10.0
    assert tx.customer_id == f"C{d.customer[5]:06d}" and tx.terminal_id == f"T{d.terminal[5]:06d}"
    assert tx.amount == d.amount[5] and tx.currency == "EUR"
    assert tx.merchant_category == MERCHANT_CATEGORIES[d.merchant_category[5]]
    assert tx.channel == CHANNELS[d.channel[5]]
    assert tx.account_age_days == d.account_age_days[5] and tx.is_complete


def test_demo_stream_ends_at_now_and_splits_history_from_live() -> None:
    now_s = 1_900_000_000.0
    history, live = demo_stream(seed=3, n_customers=200, history_days=10, now_s=now_s)
    assert len(history) > 0 and len(live) > 0
    h_times = [t.event_time_s or 0.0 for t in history]
    l_times = [t.event_time_s or 0.0 for t in live]
    assert max(h_times) <= min(l_times) and max(l_times) < now_s
    assert min(l_times) >= now_s - 86_400
    assert l_times == sorted(l_times)
    assert live.is_fraud.shape == (len(live),) and history.scenario.shape == (len(history),)
    ids = {t.transaction_id for t in history} | {t.transaction_id for t in live}
    assert len(ids) == len(history) + len(live)
