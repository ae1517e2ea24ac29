"""The transaction generator: customers, terminals, transactions, four fraud scenarios.

Handbook part (parameters as documented by Le Borgne et al.; code written anew):
- customers on a 100x100 grid, mean amount ~ U(5, 100), std = mean / 2,
  mean transactions per day ~ U(0, 4); terminals uniform on the grid; a
  customer uses the terminals within radius `radius` of its location;
- per customer and day a Poisson number of transactions, times ~ N(noon, 20000 s);
  like the handbook, times that fall outside the day are dropped;
- amounts ~ N(mean, std); a negative draw is replaced by U(0, 2 * mean);
- scenario 1: every amount > 220 is fraud;
- scenario 2: each day 2 terminals are compromised for the next 28 days, all
  their transactions are fraud;
- scenario 3: each day 3 customers are compromised for the next 14 days, a third
  of their transactions (Bernoulli 1/3 per transaction) get 5x the amount and are fraud.
  Later scenarios take precedence, as in the handbook.

rung's extension (documented in docs/models.md):
- each terminal has a merchant category (about 10% high-risk); each transaction a
  channel (pos 62%, ecom 24%, mobile 10%, atm 4%); customers have an account age
  (20% young, under 60 days at the start) and an international history (30%);
  legitimate international transactions: 8% with history, 1% without;
- scenario 3 fraud rows are card-not-present half of the time (channel ecom) and
  international 30% of the time;
- scenario 4 (card-not-present takeover): each day 2 customers, drawn 8x more often
  among accounts younger than 90 days, are compromised for 7 days; half of their
  remaining legitimate transactions become fraud at a random high-risk merchant
  anywhere on the grid, channel ecom (75%) or mobile, international 50% of the
  time, amount x U(1, 3). Scenario 4 only touches rows the handbook left legitimate,
  so the handbook's three scenarios keep their rates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from topics.schemas import CHANNELS, HIGH_RISK_MERCHANT_CATEGORIES, MERCHANT_CATEGORIES

DAY_S = 86_400
HANDBOOK_START_S = 1_522_540_800  # 2018-04-01T00:00:00Z
SCENARIOS: tuple[str, ...] = ("legit", "amount", "terminal", "customer", "cnp_takeover")
CHANNEL_WEIGHTS: tuple[float, ...] = (0.62, 0.24, 0.10, 0.04)  # aligned with CHANNELS
HIGH_RISK_TERMINAL_SHARE = 0.10

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class SimConfig:
    n_customers: int = 5000
    n_terminals: int = 10000
    n_days: int = 183
    start_s: int = HANDBOOK_START_S
    radius: float = 5.0
    # Handbook scenario 1: any amount above the threshold is fraud
    amount_fraud_threshold: float = 220.0
    # Handbook scenario 2: compromised terminals
    compromised_terminals_per_day: int = 2
    terminal_compromise_days: int = 28
    # Handbook scenario 3: compromised customers, a share of their payments inflated
    compromised_customers_per_day: int = 3
    customer_compromise_days: int = 14
    customer_fraud_share: float = 1 / 3
    customer_fraud_amount_factor: float = 5.0
    # rung's extension: card-not-present takeover of young accounts
    takeover_customers_per_day: int = 2
    takeover_days: int = 7
    takeover_fraud_share: float = 0.5
    young_account_days: int = 90
    young_account_weight: float = 8.0


@dataclass(frozen=True, slots=True)
class SimData:
    """One row per transaction, sorted by event time. Ids are dense indices."""

    event_time_s: FloatArray
    customer: IntArray
    terminal: IntArray
    amount: FloatArray
    merchant_category: IntArray  # index into MERCHANT_CATEGORIES
    channel: IntArray  # index into CHANNELS
    is_international: BoolArray
    has_international_history: BoolArray
    account_age_days: IntArray
    is_fraud: BoolArray
    scenario: IntArray  # index into SCENARIOS, 0 = legit
    start_s: int

    def __len__(self) -> int:
        return int(self.event_time_s.shape[0])

    @property
    def day(self) -> IntArray:
        """Day index since the simulation start."""
        return ((self.event_time_s - self.start_s) // DAY_S).astype(np.int64)

    def take(self, rows: npt.NDArray[np.int64] | BoolArray) -> SimData:
        return SimData(
            event_time_s=self.event_time_s[rows], customer=self.customer[rows],
            terminal=self.terminal[rows], amount=self.amount[rows],
            merchant_category=self.merchant_category[rows], channel=self.channel[rows],
            is_international=self.is_international[rows],
            has_international_history=self.has_international_history[rows],
            account_age_days=self.account_age_days[rows], is_fraud=self.is_fraud[rows],
            scenario=self.scenario[rows], start_s=self.start_s,
        )


@dataclass(frozen=True, slots=True)
class _Population:
    cust_xy: FloatArray
    cust_mean: FloatArray
    cust_lambda: FloatArray
    cust_age0: IntArray
    cust_intl: BoolArray
    term_xy: FloatArray
    term_mcc: IntArray
    avail_ptr: IntArray  # CSR over customers: avail_idx[avail_ptr[c]:avail_ptr[c+1]]
    avail_idx: IntArray


def _population(cfg: SimConfig, rng: np.random.Generator) -> _Population:
    cust_xy = rng.uniform(0, 100, (cfg.n_customers, 2))
    cust_mean = rng.uniform(5, 100, cfg.n_customers)
    cust_lambda = rng.uniform(0, 4, cfg.n_customers)
    young = rng.random(cfg.n_customers) < 0.2
    cust_age0 = np.where(young, rng.integers(0, 60, cfg.n_customers),
                         rng.integers(60, 3650, cfg.n_customers)).astype(np.int64)
    cust_intl = rng.random(cfg.n_customers) < 0.3
    term_xy = rng.uniform(0, 100, (cfg.n_terminals, 2))
    high = np.array([i for i, m in enumerate(MERCHANT_CATEGORIES)
                     if m in HIGH_RISK_MERCHANT_CATEGORIES], dtype=np.int64)
    low = np.array([i for i, m in enumerate(MERCHANT_CATEGORIES)
                    if m not in HIGH_RISK_MERCHANT_CATEGORIES], dtype=np.int64)
    is_high = rng.random(cfg.n_terminals) < HIGH_RISK_TERMINAL_SHARE
    term_mcc = np.where(is_high, rng.choice(high, cfg.n_terminals),
                        rng.choice(low, cfg.n_terminals)).astype(np.int64)
    ptr, idx = _available_terminals(cust_xy, term_xy, cfg.radius)
    return _Population(cust_xy, cust_mean, cust_lambda, cust_age0, cust_intl,
                       term_xy, term_mcc, ptr, idx)


def _available_terminals(cust_xy: FloatArray, term_xy: FloatArray,
                         radius: float) -> tuple[IntArray, IntArray]:
    counts: list[IntArray] = []
    indices: list[IntArray] = []
    for lo in range(0, cust_xy.shape[0], 512):
        block = cust_xy[lo:lo + 512]
        d2 = ((block[:, None, :] - term_xy[None, :, :]) ** 2).sum(axis=2)
        rows, cols = np.nonzero(d2 < radius * radius)
        counts.append(np.bincount(rows, minlength=block.shape[0]).astype(np.int64))
        indices.append(cols.astype(np.int64))
    ptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)
    return ptr, np.concatenate(indices)


def _compromise_table(rng: np.random.Generator, n_items: int, n_days: int, per_day: int,
                      duration_days: int, weights: FloatArray | None = None) -> BoolArray:
    """table[item, day]: item is compromised on that day (drawn on day d for [d, d+duration))."""
    table = np.zeros((n_items, n_days + duration_days), dtype=np.bool_)
    for d in range(n_days):
        p = None if weights is None else weights[:, d] / weights[:, d].sum()
        items = rng.choice(n_items, size=min(per_day, n_items), replace=False, p=p)
        table[items, d:d + duration_days] = True
    return table[:, :n_days]


def _base_transactions(cfg: SimConfig, pop: _Population,
                       rng: np.random.Generator) -> dict[str, npt.NDArray[np.generic]]:
    counts = rng.poisson(pop.cust_lambda[:, None], (cfg.n_customers, cfg.n_days)).ravel()
    cust = np.repeat(np.repeat(np.arange(cfg.n_customers), cfg.n_days), counts)
    day = np.repeat(np.tile(np.arange(cfg.n_days), cfg.n_customers), counts)
    t_in_day = rng.normal(DAY_S / 2, 20_000, cust.shape[0])
    n_avail = np.diff(pop.avail_ptr)[cust]
    keep = (t_in_day > 0) & (t_in_day < DAY_S) & (n_avail > 0)
    cust, day, t_in_day, n_avail = cust[keep], day[keep], t_in_day[keep], n_avail[keep]
    n = cust.shape[0]
    mean = pop.cust_mean[cust]
    amount = rng.normal(mean, mean / 2)
    amount = np.where(amount < 0, rng.uniform(0, 2 * mean), amount)
    pick = np.minimum((rng.random(n) * n_avail).astype(np.int64), n_avail - 1)
    terminal = pop.avail_idx[pop.avail_ptr[cust] + pick]
    channel = rng.choice(len(CHANNELS), size=n, p=np.array(CHANNEL_WEIGHTS))
    hist = pop.cust_intl[cust]
    intl = rng.random(n) < np.where(hist, 0.08, 0.01)
    order = np.lexsort((t_in_day, day))
    return {
        "event_time_s": (cfg.start_s + day * DAY_S + np.floor(t_in_day))[order],
        "day": day[order], "customer": cust[order], "terminal": terminal[order],
        "amount": amount[order], "channel": channel[order].astype(np.int64),
        "is_international": intl[order], "has_international_history": hist[order],
    }


def _apply_handbook_scenarios(cfg: SimConfig, cols: dict[str, npt.NDArray[np.generic]],
                              rng: np.random.Generator) -> None:
    day, cust, term = cols["day"], cols["customer"], cols["terminal"]
    amount = cols["amount"].astype(np.float64)
    scenario = np.zeros(amount.shape[0], dtype=np.int64)
    scenario[amount > cfg.amount_fraud_threshold] = 1
    terms = _compromise_table(rng, cfg.n_terminals, cfg.n_days,
                              cfg.compromised_terminals_per_day, cfg.terminal_compromise_days)
    scenario[terms[term, day]] = 2
    custs = _compromise_table(rng, cfg.n_customers, cfg.n_days,
                              cfg.compromised_customers_per_day, cfg.customer_compromise_days)
    hit = custs[cust, day] & (rng.random(amount.shape[0]) < cfg.customer_fraud_share)
    amount = np.where(hit, amount * cfg.customer_fraud_amount_factor, amount)
    scenario[hit] = 3
    n_hit = int(hit.sum())
    channel, intl = cols["channel"].copy(), cols["is_international"].copy()
    channel[hit] = np.where(rng.random(n_hit) < 0.5, CHANNELS.index("ecom"), channel[hit])
    intl[hit] = intl[hit] | (rng.random(n_hit) < 0.3)
    cols.update(amount=amount, scenario=scenario, channel=channel, is_international=intl)


def _apply_takeover(cfg: SimConfig, pop: _Population, cols: dict[str, npt.NDArray[np.generic]],
                    rng: np.random.Generator) -> None:
    age = pop.cust_age0[:, None] + np.arange(cfg.n_days)[None, :]
    weights = np.where(age < cfg.young_account_days, cfg.young_account_weight, 1.0)
    custs = _compromise_table(rng, cfg.n_customers, cfg.n_days, cfg.takeover_customers_per_day,
                              cfg.takeover_days, weights)
    scenario = cols["scenario"]
    hit = (custs[cols["customer"], cols["day"]] & (scenario == 0)
           & (rng.random(scenario.shape[0]) < cfg.takeover_fraud_share))
    n_hit = int(hit.sum())
    high = np.flatnonzero(np.isin(pop.term_mcc, [MERCHANT_CATEGORIES.index(m)
                                                 for m in HIGH_RISK_MERCHANT_CATEGORIES]))
    terminal, channel = cols["terminal"].copy(), cols["channel"].copy()
    amount, intl = cols["amount"].copy(), cols["is_international"].copy()
    terminal[hit] = rng.choice(high, n_hit)
    channel[hit] = np.where(rng.random(n_hit) < 0.75, CHANNELS.index("ecom"),
                            CHANNELS.index("mobile"))
    intl[hit] = rng.random(n_hit) < 0.5
    amount[hit] = amount[hit] * rng.uniform(1, 3, n_hit)
    scenario = scenario.copy()
    scenario[hit] = 4
    cols.update(terminal=terminal, channel=channel, amount=amount, is_international=intl,
                scenario=scenario)


def simulate(config: SimConfig | None = None, seed: int = 0) -> SimData:
    """Simulate `config.n_days` days of transactions; same seed, same data."""
    cfg = config or SimConfig()
    rng = np.random.default_rng(seed)
    pop = _population(cfg, rng)
    cols = _base_transactions(cfg, pop, rng)
    _apply_handbook_scenarios(cfg, cols, rng)
    _apply_takeover(cfg, pop, cols, rng)
    cust = cols["customer"].astype(np.int64)
    term = cols["terminal"].astype(np.int64)
    scenario = cols["scenario"].astype(np.int64)
    return SimData(
        event_time_s=cols["event_time_s"].astype(np.float64),
        customer=cust,
        terminal=term,
        amount=np.maximum(np.round(cols["amount"].astype(np.float64), 2), 0.01),
        merchant_category=pop.term_mcc[term],
        channel=cols["channel"].astype(np.int64),
        is_international=cols["is_international"].astype(np.bool_),
        has_international_history=cols["has_international_history"].astype(np.bool_),
        account_age_days=pop.cust_age0[cust] + cols["day"].astype(np.int64),
        is_fraud=scenario > 0,
        scenario=scenario,
        start_s=cfg.start_s,
    )
