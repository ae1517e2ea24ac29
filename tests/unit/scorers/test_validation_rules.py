from __future__ import annotations

import numpy as np
from ladder_fakes import make_tx

from scorers import validation
from scorers.rules import RULES_THRESHOLDS, score_rules


def test_clean_record_can_reach_the_primary() -> None:
    plan = validation.plan([make_tx(0)])
    assert plan.dirty.tolist() == [] and plan.reasons == ()
    assert plan.eligible(None).tolist() == [True]


def test_each_tier_names_the_fields_it_needs() -> None:
    txs = [make_tx(0, terminal_id=None), make_tx(1, channel=None),
           make_tx(2, amount=None), make_tx(3, amount=float("nan")),
           make_tx(4, account_age_days=-3), make_tx(5, event_time_s=1.0),
           make_tx(6, problems=("currency: invalid",))]
    plan = validation.plan(txs)
    primary = plan.eligible(None)
    fallback = plan.eligible(frozenset(validation.FALLBACK_FIELDS))
    rules = plan.eligible(frozenset(validation.RULES_FIELDS))
    # the best tier each record may reach: 0 primary, 1 fallback, 2 rules, 3 default
    best = [0 if p else 1 if f else 2 if r else 3
            for p, f, r in zip(primary.tolist(), fallback.tolist(), rules.tolist(), strict=True)]
    assert best == [1, 2, 3, 3, 2, 2, 2]
    assert plan.dirty.tolist() == list(range(7))
    assert plan.reasons[0] == ("invalid_input:terminal_id_missing",)
    assert plan.reasons[3] == ("invalid_input:amount_invalid",)
    assert plan.reasons[6] == ("invalid_input:currency_invalid",)


def test_rules_fire_with_reasons_and_skip_missing_fields() -> None:
    txs = [
        make_tx(0),
        make_tx(1, amount=1500.0),
        make_tx(2, amount=8000.0, account_age_days=3, merchant_category="6051", channel="ecom",
                is_international=True, has_international_history=False),
        make_tx(3, amount=20.0, account_age_days=None, merchant_category=None, channel=None,
                is_international=None, has_international_history=None),
        make_tx(4, amount=300.0, channel="atm", is_international=True, account_age_days=5),
    ]
    res = score_rules(txs)
    assert res.reasons[0] == () and res.scores[0] == 0.0 and not res.fired[0]
    assert res.reasons[1] == ("rule:high_amount",)
    assert RULES_THRESHOLDS.review > res.scores[1] > 0
    assert {"rule:very_high_amount", "rule:new_account", "rule:high_risk_merchant",
            "rule:international_without_history", "rule:remote_high_risk_merchant",
            "rule:new_account_high_amount"} == set(res.reasons[2])
    assert res.scores[2] >= RULES_THRESHOLDS.block
    assert res.reasons[3] == () and not res.fired[3]
    assert "rule:atm_international_new_account" in res.reasons[4]
    assert np.all((res.scores >= 0) & (res.scores <= 1))


def test_rules_on_an_empty_batch() -> None:
    res = score_rules([])
    assert res.scores.shape == (0,) and res.reasons == ()
