"""The handbook's protocol and the feature matrices built from the simulator.

Protocol (Le Borgne et al.): train on one week starting 2018-07-25, leave a one-week
delay (labels not yet known), test on the following week. From each test day the
customers already known to be compromised are removed: those with a fraud in the
training week, plus those with a fraud on the delay-period day that is known by then.

Model selection never looks at the test week, nor at the delay week (whose labels
are not known yet on the first test day). It uses the handbook's validation
protocol: the same three periods shifted back by delay + test days, so the
validation "test" week is the training week itself (days 115-121) and the
validation training week is days 101-107, separated from it by the same one-week
delay. Architectures, epochs, thresholds and baseline hyper-parameters are chosen
there (`Dataset.valid_train` -> `Dataset.valid`); the chosen settings are then
refit on the training week (`Dataset.train`) and the test week is scored once.
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

    def validation(self) -> Protocol:
        """The same protocol shifted back by delay + test days: its test week is our
        training week, its training week ends one delay before that."""
        shift = self.delay_days + self.test_days
        return Protocol(self.train_start_day - shift, self.train_days, self.delay_days,
                        self.test_days)


@dataclass(frozen=True, slots=True)
class Split:
    rows: I64  # row indices into the SimData
    event: F32  # event features
    primary: F32  # event + online features
    y: npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Dataset:
    data: SimData
    valid_train: Split  # validation protocol's training week (days 101-107)
    valid: Split  # validation week = the training week, known-compromised customers removed
    train: Split  # the training week (days 115-121): the final models are refit here
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

    def week(p: Protocol) -> I64:
        return np.flatnonzero((day >= p.train_start_day)
                              & (day < p.delay_start_day)).astype(np.int64)

    val = proto.validation()
    return Dataset(data, split(week(val)), split(test_rows(data, val)), split(week(proto)),
                   split(test_rows(data, proto)))
