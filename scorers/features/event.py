"""Event-only features: computed from one transaction, no state, no I/O.

The fallback reads these; the primary reads them followed by the online
aggregates. Missing fields get neutral values (the ladder decides separately
whether a record is eligible for a tier).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from topics.schemas import CHANNELS, HIGH_RISK_MERCHANT_CATEGORIES, Transaction

DAY_S: Final = 86_400
NEUTRAL_AMOUNT: Final = 50.0  # about the median simulated amount
NEUTRAL_ACCOUNT_AGE_DAYS: Final = 365
NEW_ACCOUNT_DAYS: Final = 90
NIGHT_END_HOUR: Final = 6

EVENT_FEATURE_NAMES: Final[tuple[str, ...]] = (
    "amount",
    "log_amount",
    "is_night",
    "is_weekend",
    "is_high_risk_mcc",
    "is_international",
    "international_without_history",
    "log_account_age_days",
    "is_new_account",
    *(f"channel_{c}" for c in CHANNELS),
)


def event_features(txs: Sequence[Transaction]) -> npt.NDArray[np.float32]:
    """(len(txs), len(EVENT_FEATURE_NAMES)) float32, None fields imputed."""
    amount = np.array([NEUTRAL_AMOUNT if t.amount is None else t.amount for t in txs],
                      dtype=np.float64)
    time_s = np.array([np.nan if t.event_time_s is None else t.event_time_s for t in txs],
                      dtype=np.float64)
    high_risk = np.array([t.merchant_category in HIGH_RISK_MERCHANT_CATEGORIES for t in txs],
                         dtype=np.bool_)
    intl = np.array([t.is_international is True for t in txs], dtype=np.bool_)
    hist = np.array([t.has_international_history is not False for t in txs], dtype=np.bool_)
    age = np.array([NEUTRAL_ACCOUNT_AGE_DAYS if t.account_age_days is None
                    else t.account_age_days for t in txs], dtype=np.float64)
    channel = np.array([CHANNELS.index(t.channel) if t.channel in CHANNELS else -1
                        for t in txs], dtype=np.int64)
    return event_feature_matrix(amount, time_s, high_risk, intl, hist, age, channel)


def event_feature_matrix(
    amount: npt.NDArray[np.float64],
    event_time_s: npt.NDArray[np.float64],
    is_high_risk_mcc: npt.NDArray[np.bool_],
    is_international: npt.NDArray[np.bool_],
    has_international_history: npt.NDArray[np.bool_],
    account_age_days: npt.NDArray[np.float64],
    channel: npt.NDArray[np.int64],
) -> npt.NDArray[np.float32]:
    """Columnar form of `event_features` (NaN event time = unknown; channel -1 = unknown)."""
    amount = np.where(np.isfinite(amount) & (amount >= 0), amount, NEUTRAL_AMOUNT)
    known_time = np.isfinite(event_time_s)
    t = np.where(known_time, event_time_s, 0.0)
    hour = (t % DAY_S) / 3600.0
    weekday = (np.floor(t / DAY_S).astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    age = np.where(np.isfinite(account_age_days) & (account_age_days >= 0),
                   account_age_days, NEUTRAL_ACCOUNT_AGE_DAYS)
    cols = [
        amount,
        np.log1p(amount),
        known_time & (hour < NIGHT_END_HOUR),
        known_time & (weekday >= 5),
        is_high_risk_mcc,
        is_international,
        is_international & ~has_international_history,
        np.log1p(age),
        age < NEW_ACCOUNT_DAYS,
        *(channel == i for i in range(len(CHANNELS))),
    ]
    return np.stack([np.asarray(c, dtype=np.float32) for c in cols], axis=1)
