"""The handbook's protocol and the feature matrices built from the simulator.

Protocol (Le Borgne et al.): train on one week starting 2018-07-25, leave a one-week
delay (labels not yet known), test on the following week. From each test day the
customers already known to be compromised are removed: those with a fraud in the
training week, plus those with a fraud on the delay-period day that is known by then.
rung uses the delay week (which the model never trains on) to pick the best epoch
and calibrate thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scorers.features import event_feature_matrix, offline_online_features, primary_features
from scorers.lab.sim.simulator import DAY_S, SimConfig, SimData, simulate
from topics.schemas import HIGH_RISK_MERCHANT_CATEGORIES, MERCHANT_CATEGORIES

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
HANDBOOK_TRAIN_START_DAY = 115  # 2018-07-25 is day 115 after 2018-04-01


@dataclass(frozen=True, slots=True)
class Protocol:
    train_start_day: int = HANDBOOK_TRAIN_START_DAY
    train_days: int = 7
    delay_days: int = 7
    test_days: int = 7

    @property
    def delay_start_day(self) -> int:
        return self.train_start_day + self.train_days

    @property
    def test_start_day(self) -> int:
        return self.delay_start_day + self.delay_days


@dataclass(frozen=True, slots=True)
class Split:
    rows: I64  # row indices into the SimData
    event: F32  # event features
    primary: F32  # event + online features
    y: npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Dataset:
    data: SimData
    train: Split
    valid: Split  # the delay week
    test: Split  # the test week, known-compromised customers removed


def event_features_of(data: SimData) -> F32:
    high = np.array([m in HIGH_RISK_MERCHANT_CATEGORIES for m in MERCHANT_CATEGORIES])
    return event_feature_matrix(
        data.amount, data.event_time_s, high[data.merchant_category], data.is_international,
        data.has_international_history, data.account_age_days.astype(np.float64), data.channel)


def online_features_of(data: SimData) -> F32:
    day = (data.event_time_s // DAY_S).astype(np.int64)
    return offline_online_features(day, data.customer, data.terminal, data.amount, data.is_fraud)


def test_rows(data: SimData, protocol: Protocol) -> I64:
    day = data.day
    in_train = (day >= protocol.train_start_day) & (day < protocol.delay_start_day)
    known: set[int] = set(data.customer[in_train & data.is_fraud].tolist())
    rows: list[I64] = []
    for k in range(protocol.test_days):
        known_day = protocol.delay_start_day + k - 1
        known.update(data.customer[(day == known_day) & data.is_fraud].tolist())
        today = np.flatnonzero(day == protocol.test_start_day + k)
        keep = ~np.isin(data.customer[today], np.fromiter(known, dtype=np.int64, count=len(known)))
        rows.append(today[keep])
    return np.concatenate(rows).astype(np.int64)


def build_dataset(seed: int = 0, config: SimConfig | None = None,
                  protocol: Protocol | None = None) -> Dataset:
    """Simulate, compute both feature sets over the whole stream, cut the protocol's splits."""
    proto = protocol or Protocol()
    data = simulate(config or SimConfig(), seed)
    event = event_features_of(data)
    full = primary_features(event, online_features_of(data))
    day = data.day
    y = data.is_fraud.astype(np.float32)

    def split(rows: I64) -> Split:
        return Split(rows, event[rows], full[rows], y[rows])

    train = np.flatnonzero((day >= proto.train_start_day) & (day < proto.delay_start_day))
    valid = np.flatnonzero((day >= proto.delay_start_day) & (day < proto.test_start_day))
    return Dataset(data, split(train.astype(np.int64)), split(valid.astype(np.int64)),
                   split(test_rows(data, proto)))
