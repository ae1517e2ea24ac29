"""Event-only features: values, and neutral values for missing fields."""

from __future__ import annotations

import numpy as np

from scorers.features import EVENT_FEATURE_NAMES, event_features
from scorers.features.event import NEUTRAL_ACCOUNT_AGE_DAYS, NEUTRAL_AMOUNT
from topics.schemas import Transaction

COL = {name: i for i, name in enumerate(EVENT_FEATURE_NAMES)}
SATURDAY_3AM_S = 1_700_000_000 - (1_700_000_000 % 86_400) + 3 * 3600.0  # 2023-11-14 is a Tuesday


def test_event_features_of_a_full_record() -> None:
    t = Transaction("a", SATURDAY_3AM_S + 4 * 86_400, "c", "t", 99.0, "EUR", "7995", True,
                    False, 10, "ecom")
    f = event_features([t])
    assert f.shape == (1, len(EVENT_FEATURE_NAMES)) and f.dtype == np.float32
    assert f[0, COL["amount"]] == 99.0
    assert f[0, COL["log_amount"]] == np.float32(np.log1p(99.0))
    assert f[0, COL["is_night"]] == 1 and f[0, COL["is_weekend"]] == 1
    assert f[0, COL["is_high_risk_mcc"]] == 1 and f[0, COL["international_without_history"]] == 1
    assert f[0, COL["is_new_account"]] == 1 and f[0, COL["channel_ecom"]] == 1
    assert f[0, COL["channel_pos"]] == 0


def test_missing_fields_get_neutral_values() -> None:
    t = Transaction("b", None, None, None, None, None, None, None, None, None, None, ("all",))
    f = event_features([t])
    assert np.isfinite(f).all()
    assert f[0, COL["amount"]] == NEUTRAL_AMOUNT
    assert f[0, COL["log_account_age_days"]] == np.float32(np.log1p(NEUTRAL_ACCOUNT_AGE_DAYS))
    zero = [n for n in EVENT_FEATURE_NAMES if n not in ("amount", "log_amount",
                                                        "log_account_age_days")]
    assert all(f[0, COL[n]] == 0 for n in zero)


def test_empty_batch() -> None:
    assert event_features([]).shape == (0, len(EVENT_FEATURE_NAMES))
