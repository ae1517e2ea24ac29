"""Delayed labels for simulated transactions: which transactions get one, of what kind, when.

A label says what became known about a transaction and when (`topics.schemas.Label`).
`simulate_labels(data, config, seed)` draws them for any `SimData` (the simulator's
or the fast generator's), vectorised:

- every fraud gets exactly one label: a chargeback with probability 0.25 (delay
  log-normal, median 4 days, sigma 0.3), otherwise a confirmed fraud — the
  cardholder's report or an analyst's decision (log-normal, median 12 hours,
  sigma 1.2);
- 2% of the genuine transactions get a confirmed-genuine label — the customer
  answers an alert or a step-up (log-normal, median 2 hours, sigma 1.0);
- every delay lies in [10 minutes, 7 days - 1 hour]: a draw outside is redrawn
  (a truncated log-normal, no point mass at the bounds).

Why 7 days - 1 hour: the online terminal features (`scorers.features.online`) count
the frauds of days D-37 .. D-8 for an event on UTC day D, assuming every fraud is
known `TERMINAL_DELAY_DAYS` (7) days after its day. A transaction at time t lies on
day floor(t / 86400) and its label comes before t + 7 days - 1 hour, so before the
start of day floor(t / 86400) + 8 with an hour to spare for the label feed to apply
it. The offline features and a live stream of these labels therefore see the same
frauds, which is what a parity check between them needs. Real chargebacks often
take longer than a week; they are compressed to fit that assumption.

Deterministic by seed, and drawn from their own generator, so adding labels never
changes the events of `simulate` or `generate_load` for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scorers.features.online import TERMINAL_DELAY_DAYS
from scorers.lab.sim.simulator import DAY_S, FloatArray, IntArray, SimData
from topics.schemas import LabelKind

HOUR_S = 3_600
LABEL_KINDS: tuple[LabelKind, ...] = tuple(LabelKind)  # `SimLabels.kind` indexes this
MAX_LABEL_DELAY_S = TERMINAL_DELAY_DAYS * DAY_S  # what the online features assume
_FRAUD, _GENUINE, _CHARGEBACK = (LABEL_KINDS.index(k) for k in
                                 (LabelKind.FRAUD, LabelKind.GENUINE, LabelKind.CHARGEBACK))
_SEED_SALT = 0x1ABE1  # labels draw from their own stream: events stay as they were


@dataclass(frozen=True, slots=True)
class Delay:
    """A log-normal delay in seconds: median `median_s`, shape `sigma`."""

    median_s: float
    sigma: float


@dataclass(frozen=True, slots=True)
class LabelConfig:
    chargeback_share: float = 0.25  # of the frauds; the others are confirmed frauds
    fraud_delay: Delay = Delay(12 * HOUR_S, 1.2)
    chargeback_delay: Delay = Delay(4 * DAY_S, 0.3)
    genuine_share: float = 0.02  # of the genuine transactions
    genuine_delay: Delay = Delay(2 * HOUR_S, 1.0)
    min_delay_s: float = 600.0
    max_delay_s: float = MAX_LABEL_DELAY_S - HOUR_S

    def __post_init__(self) -> None:
        if not 0 < self.min_delay_s < self.max_delay_s <= MAX_LABEL_DELAY_S:
            raise ValueError(f"label delays must lie in (0, {MAX_LABEL_DELAY_S}] s (the "
                             f"features' {TERMINAL_DELAY_DAYS}-day label delay), got "
                             f"[{self.min_delay_s}, {self.max_delay_s}]")
        for share in (self.chargeback_share, self.genuine_share):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"shares must lie in [0, 1], got {share}")


@dataclass(frozen=True, slots=True)
class SimLabels:
    """One row per label, sorted by `labelled_at_s`; `row` indexes the labelled `SimData`."""

    row: IntArray
    kind: IntArray  # index into LABEL_KINDS
    labelled_at_s: FloatArray

    def __len__(self) -> int:
        return int(self.row.shape[0])

    @property
    def is_fraud(self) -> npt.NDArray[np.bool_]:
        return np.asarray(self.kind != _GENUINE, dtype=np.bool_)

    def take(self, rows: npt.NDArray[np.int64] | npt.NDArray[np.bool_]) -> SimLabels:
        return SimLabels(self.row[rows], self.kind[rows], self.labelled_at_s[rows])

    @classmethod
    def empty(cls) -> SimLabels:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))


def simulate_labels(data: SimData, config: LabelConfig | None = None,
                    seed: int = 0) -> SimLabels:
    """The labels of `data` (see the module docstring); same data and seed, same labels."""
    cfg = config or LabelConfig()
    rng = np.random.default_rng([seed, _SEED_SALT])
    n = len(data)
    frauds = np.flatnonzero(data.is_fraud)
    chargeback = rng.random(frauds.shape[0]) < cfg.chargeback_share
    genuine = np.flatnonzero(~data.is_fraud)
    genuine = genuine[rng.random(genuine.shape[0]) < cfg.genuine_share]
    rows = np.concatenate([frauds, genuine]).astype(np.int64)
    kind = np.concatenate([np.where(chargeback, _CHARGEBACK, _FRAUD),
                           np.full(genuine.shape[0], _GENUINE)]).astype(np.int64)
    delay = np.zeros(rows.shape[0])
    for code, spec in ((_FRAUD, cfg.fraud_delay), (_CHARGEBACK, cfg.chargeback_delay),
                       (_GENUINE, cfg.genuine_delay)):
        hit = kind == code
        delay[hit] = _truncated_lognormal(rng, int(hit.sum()), spec, cfg)
    at = data.event_time_s[rows] + delay if n else delay
    order = np.lexsort((rows, at))
    return SimLabels(rows[order], kind[order], np.asarray(at[order], dtype=np.float64))


def _truncated_lognormal(rng: np.random.Generator, n: int, spec: Delay,
                         cfg: LabelConfig) -> FloatArray:
    """`n` log-normal draws within [min_delay_s, max_delay_s]; draws outside are redrawn."""
    mu = float(np.log(spec.median_s))
    out = rng.lognormal(mu, spec.sigma, n)
    bad = (out < cfg.min_delay_s) | (out > cfg.max_delay_s)
    for _ in range(1000):
        if not bad.any():
            return out
        out[bad] = rng.lognormal(mu, spec.sigma, int(bad.sum()))
        bad = (out < cfg.min_delay_s) | (out > cfg.max_delay_s)
    raise ValueError(f"delay {spec} hardly ever falls in "
                     f"[{cfg.min_delay_s}, {cfg.max_delay_s}] s")
