"""A fast load generator with the simulator's distributions: N live events, history on demand.

`simulate` draws every customer's every day; that is right for training but makes
`N` live events cost `N x 39 days`. `generate_load(n_events, config, seed)` draws
exactly `n_events` live events and, only when asked (`history_days > 0`, the
feature-store warm-up), the history of the customers that appear in them.

Kept from `simulator.py` (its module docstring names the parameters):
- customers on a 100x100 grid, mean amount ~ U(5, 100), amounts ~ N(mean, mean/2)
  (a negative draw replaced by U(0, 2 mean)), daily rates ~ U(0, 4), 20% young
  accounts, 30% with an international history, times ~ N(noon, 20000 s) within the day;
- terminals uniform on the grid with a merchant category (10% high-risk); a customer
  pays at terminals near its location (`placement="near"`);
- the four fraud scenarios with their precedence. Compromises are drawn per day at
  the handbook's *rates per entity* (2/day of 10,000 terminals for 28 days, 3/day of
  5,000 customers for 14 days, 2/day of 5,000 for the takeover), so the fraud share
  stays the handbook's at any cardinality.

Changed, and why:
- skew: a customer's activity is its U(0, 4) rate times a Zipf weight
  `rank ** -customer_skew` (rank a random permutation); terminals carry a Zipf
  weight `rank ** -terminal_skew` too (a few hot merchants, a long tail). Skew 0
  gives the simulator's flat shape.
- "near": the grid is cut into cells of area pi r^2 / 9; an event picks one of the
  3x3 cells around its customer (the same area as the simulator's radius), then a
  terminal of that cell by weight; an empty cell falls back to any terminal.
- history covers only customers that appear live, at their live daily rate.

Labels: `Load.history_labels` and `Load.live_labels`, drawn by `labels.simulate_labels`
(its docstring gives the delays) over the history and the live rows; each indexes
its own part. A history transaction's label may come after the history ends.

Pure numpy; imports nothing from `stream_app` or any Kafka client.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from scorers.features.online import CUSTOMER_SPAN_DAYS, TERMINAL_DELAY_DAYS, TERMINAL_SPAN_DAYS
from scorers.lab.sim.labels import LabelConfig, SimLabels, simulate_labels
from scorers.lab.sim.simulator import (
    CHANNEL_WEIGHTS,
    DAY_S,
    HIGH_RISK_TERMINAL_SHARE,
    BoolArray,
    FloatArray,
    IntArray,
    SimConfig,
    SimData,
)
from topics.schemas import CHANNELS, HIGH_RISK_MERCHANT_CATEGORIES, MERCHANT_CATEGORIES

# The online features look back 30 days for customers and days D-37 .. D-8 for
# terminals; one more day because simulated days are not aligned to UTC days.
WARM_HISTORY_DAYS = max(CUSTOMER_SPAN_DAYS, TERMINAL_DELAY_DAYS + TERMINAL_SPAN_DAYS) + 1
_HANDBOOK = SimConfig()
_HIGH = np.array([i for i, m in enumerate(MERCHANT_CATEGORIES)
                  if m in HIGH_RISK_MERCHANT_CATEGORIES], dtype=np.int64)
_LOW = np.array([i for i, m in enumerate(MERCHANT_CATEGORIES)
                 if m not in HIGH_RISK_MERCHANT_CATEGORIES], dtype=np.int64)


@dataclass(frozen=True, slots=True)
class LoadConfig:
    n_customers: int = 100_000
    n_terminals: int = 10_000
    customer_skew: float = 0.5  # Zipf exponent on top of the U(0, 4) daily rates; 0 = flat
    terminal_skew: float = 1.0  # Zipf exponent of terminal popularity; 0 = flat
    placement: Literal["near", "uniform"] = "near"
    radius: float = _HANDBOOK.radius
    live_days: int = 1  # the live events spread over this many days, ending at `end_s`
    # Compromises per entity and day (the handbook's counts over its cardinality)
    terminal_compromise_rate: float = (_HANDBOOK.compromised_terminals_per_day
                                       / _HANDBOOK.n_terminals)
    customer_compromise_rate: float = (_HANDBOOK.compromised_customers_per_day
                                       / _HANDBOOK.n_customers)
    takeover_rate: float = _HANDBOOK.takeover_customers_per_day / _HANDBOOK.n_customers


@dataclass(frozen=True, slots=True)
class Load:
    """`history` (empty unless asked) and `live` (exactly `n_events` rows), in time order,
    and the labels of each (in label-time order, `row` indexing its part)."""

    history: SimData
    live: SimData
    history_labels: SimLabels = field(default_factory=SimLabels.empty)
    live_labels: SimLabels = field(default_factory=SimLabels.empty)


@dataclass(frozen=True, slots=True)
class _Population:
    weight: FloatArray  # customer activity, sums to 1
    mean: FloatArray
    age0: IntArray
    intl: BoolArray
    cell: IntArray  # customer's grid cell (x, y) flattened
    term_mcc: IntArray
    term_cum: FloatArray  # cumulative terminal weight in cell order, leading 0
    term_order: IntArray  # terminals sorted by cell
    cell_ptr: IntArray  # CSR over cells into term_order
    side: int


def _zipf(rng: np.random.Generator, n: int, s: float) -> FloatArray:
    if s <= 0:
        return np.ones(n)
    return np.asarray(rng.permutation(n) + 1, dtype=np.float64) ** -s


def _population(cfg: LoadConfig, rng: np.random.Generator) -> _Population:
    nc, nt = cfg.n_customers, cfg.n_terminals
    cust_xy = rng.uniform(0, 100, (nc, 2))
    mean = rng.uniform(5, 100, nc)
    weight = rng.uniform(0, 4, nc) * _zipf(rng, nc, cfg.customer_skew)
    young = rng.random(nc) < 0.2
    age0 = np.where(young, rng.integers(0, 60, nc), rng.integers(60, 3650, nc)).astype(np.int64)
    intl = rng.random(nc) < 0.3
    term_xy = rng.uniform(0, 100, (nt, 2))
    is_high = rng.random(nt) < HIGH_RISK_TERMINAL_SHARE
    mcc = np.where(is_high, rng.choice(_HIGH, nt), rng.choice(_LOW, nt)).astype(np.int64)
    t_weight = _zipf(rng, nt, cfg.terminal_skew)
    if cfg.placement == "near":
        side = max(1, math.ceil(100 / (cfg.radius * math.sqrt(math.pi) / 3)))
    else:
        side = 1
    t_cell = _cell(term_xy, side)
    order = np.argsort(t_cell, kind="stable").astype(np.int64)
    ptr = np.searchsorted(t_cell[order], np.arange(side * side + 1)).astype(np.int64)
    cum = np.concatenate([[0.0], np.cumsum(t_weight[order])])
    return _Population(weight / weight.sum(), mean, age0, intl, _cell(cust_xy, side), mcc,
                       cum, order, ptr, side)


def _cell(xy: FloatArray, side: int) -> IntArray:
    ij = np.minimum((xy / 100 * side).astype(np.int64), side - 1)
    return ij[:, 0] * side + ij[:, 1]


def _terminals(pop: _Population, cust: IntArray, rng: np.random.Generator) -> IntArray:
    """A terminal per event: one of the 3x3 cells around the customer, then by weight."""
    n, side = cust.shape[0], pop.side
    cell = pop.cell[cust]
    x = np.clip(cell // side + rng.integers(-1, 2, n), 0, side - 1)
    y = np.clip(cell % side + rng.integers(-1, 2, n), 0, side - 1)
    cell = x * side + y
    lo, hi = pop.cell_ptr[cell], pop.cell_ptr[cell + 1]
    empty = lo == hi
    lo, hi = np.where(empty, 0, lo), np.where(empty, pop.term_order.shape[0], hi)
    target = pop.term_cum[lo] + rng.random(n) * (pop.term_cum[hi] - pop.term_cum[lo])
    pos = np.clip(np.searchsorted(pop.term_cum, target, side="right") - 1, lo, hi - 1)
    return np.asarray(pop.term_order[pos], dtype=np.int64)


def _times_in_day(rng: np.random.Generator, n: int) -> FloatArray:
    """N(noon, 20000 s) truncated to the day (the simulator drops, we redraw)."""
    t = rng.normal(DAY_S / 2, 20_000, n)
    bad = (t <= 0) | (t >= DAY_S)
    while bad.any():
        t[bad] = rng.normal(DAY_S / 2, 20_000, int(bad.sum()))
        bad = (t <= 0) | (t >= DAY_S)
    return np.floor(t)


def _compromised(rng: np.random.Generator, n_items: int, n_days: int, rate: float,
                 duration: int, weights: FloatArray | None = None) -> IntArray:
    """Sorted keys item * n_days + day of (item, day) pairs under compromise."""
    n_draws = rng.poisson(rate * n_items * (n_days + duration))
    p = None if weights is None else weights / weights.sum()
    items = rng.choice(n_items, size=n_draws, p=p)
    start = rng.integers(-duration + 1, n_days, n_draws)
    days = start[:, None] + np.arange(duration)[None, :]
    keys = (items[:, None] * n_days + days)[(days >= 0) & (days < n_days)]
    return np.unique(keys).astype(np.int64)


def _hit(keys: IntArray, item: IntArray, day: IntArray, n_days: int) -> BoolArray:
    return np.isin(item * n_days + day, keys)


def _scenarios(cfg: LoadConfig, pop: _Population, cust: IntArray, term: IntArray,
               day: IntArray, n_days: int, amount: FloatArray, channel: IntArray,
               intl: BoolArray, rng: np.random.Generator) -> IntArray:
    """Apply the four scenarios in the simulator's order, in place; return scenario codes."""
    n = cust.shape[0]
    scenario = np.zeros(n, dtype=np.int64)
    scenario[amount > _HANDBOOK.amount_fraud_threshold] = 1
    keys = _compromised(rng, cfg.n_terminals, n_days, cfg.terminal_compromise_rate,
                        _HANDBOOK.terminal_compromise_days)
    scenario[_hit(keys, term, day, n_days)] = 2
    keys = _compromised(rng, cfg.n_customers, n_days, cfg.customer_compromise_rate,
                        _HANDBOOK.customer_compromise_days)
    hit = _hit(keys, cust, day, n_days) & (rng.random(n) < _HANDBOOK.customer_fraud_share)
    amount[hit] *= _HANDBOOK.customer_fraud_amount_factor
    scenario[hit] = 3
    k = int(hit.sum())
    channel[hit] = np.where(rng.random(k) < 0.5, CHANNELS.index("ecom"), channel[hit])
    intl[hit] |= rng.random(k) < 0.3
    young = pop.age0 < _HANDBOOK.young_account_days
    keys = _compromised(rng, cfg.n_customers, n_days, cfg.takeover_rate, _HANDBOOK.takeover_days,
                        np.where(young, _HANDBOOK.young_account_weight, 1.0))
    hit = (_hit(keys, cust, day, n_days) & (scenario == 0)
           & (rng.random(n) < _HANDBOOK.takeover_fraud_share))
    k = int(hit.sum())
    high = np.flatnonzero(np.isin(pop.term_mcc, _HIGH))
    term[hit] = rng.choice(high, k)
    channel[hit] = np.where(rng.random(k) < 0.75, CHANNELS.index("ecom"), CHANNELS.index("mobile"))
    intl[hit] = rng.random(k) < 0.5
    amount[hit] *= rng.uniform(1, 3, k)
    scenario[hit] = 4
    return scenario


def generate_load(n_events: int, config: LoadConfig | None = None, seed: int = 0, *,
                  history_days: int = 0, end_s: float = 1.75e9,
                  labels: LabelConfig | None = None) -> Load:
    """Exactly `n_events` live events over `config.live_days` days ending at `end_s`, and
    `history_days` days of history before them for the customers that appear live.

    Same seed, same data (and labels, drawn with `labels` or `LabelConfig()`). Pass
    `history_days=WARM_HISTORY_DAYS` to warm the feature store.
    """
    cfg = config or LoadConfig()
    rng = np.random.default_rng(seed)
    pop = _population(cfg, rng)
    n_days = history_days + cfg.live_days
    start_s = int(end_s) - n_days * DAY_S
    live_cust = rng.choice(cfg.n_customers, size=n_events, p=pop.weight)
    live_day = history_days + rng.integers(0, cfg.live_days, n_events)
    seen = np.unique(live_cust)
    daily = pop.weight[seen] * n_events / cfg.live_days
    hist_cust = np.repeat(seen, rng.poisson(daily * history_days)) if history_days else seen[:0]
    hist_day = rng.integers(0, max(history_days, 1), hist_cust.shape[0])
    cust = np.concatenate([hist_cust, live_cust]).astype(np.int64)
    day = np.concatenate([hist_day, live_day]).astype(np.int64)
    n = cust.shape[0]
    t = start_s + day * DAY_S + _times_in_day(rng, n)
    mean = pop.mean[cust]
    amount = rng.normal(mean, mean / 2)
    amount = np.where(amount < 0, rng.uniform(0, 2 * mean), amount)
    term = _terminals(pop, cust, rng)
    channel = np.asarray(rng.choice(len(CHANNELS), size=n, p=np.array(CHANNEL_WEIGHTS)),
                         dtype=np.int64)
    hist = pop.intl[cust]
    intl = rng.random(n) < np.where(hist, 0.08, 0.01)
    scenario = _scenarios(cfg, pop, cust, term, day, n_days, amount, channel, intl, rng)
    order = np.argsort(t, kind="stable")
    data = SimData(
        event_time_s=t[order], customer=cust[order], terminal=term[order],
        amount=np.maximum(np.round(amount[order], 2), 0.01),
        merchant_category=pop.term_mcc[term[order]], channel=channel[order],
        is_international=intl[order], has_international_history=hist[order],
        account_age_days=pop.age0[cust[order]] + day[order], is_fraud=scenario[order] > 0,
        scenario=scenario[order], start_s=start_s)
    split = n - n_events  # live days come after every history day
    history, live = data.take(np.arange(split)), data.take(np.arange(split, n))
    return Load(history=history, live=live,
                history_labels=simulate_labels(history, labels, seed),
                live_labels=simulate_labels(live, labels, seed + 1))


def top_share(ids: npt.NDArray[np.int64], fraction: float = 0.01) -> float:
    """Share of the rows that belong to the top `fraction` of the distinct ids."""
    if ids.shape[0] == 0:
        return 0.0
    counts = np.sort(np.unique(ids, return_counts=True)[1])[::-1]
    k = max(1, int(round(fraction * counts.shape[0])))
    return float(counts[:k].sum() / ids.shape[0])
