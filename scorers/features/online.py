"""Online aggregates: one definition, computed offline here and online in the feature store.

Windows work on UTC day buckets (day = floor(event_time_s / 86400)). For an event
on day D, processed in stream order:
- customer window of w days: the customer's events on days D-w+1 .. D that came
  before this event (an event never sees itself);
- terminal window of w days with a 7-day delay: the terminal's events on days
  D-7-w .. D-8, i.e. [t - delay - w, t - delay) in whole days, and the frauds among
  them (labels are known after the delay).
Amounts are summed in integer cents so both paths agree exactly.
`online_features_from_sums` turns the raw sums into features; the offline function
below and `scorers.feature_store` both call it, so training and serving share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

DAY_S: Final = 86_400
CUSTOMER_WINDOWS_DAYS: Final[tuple[int, ...]] = (1, 7, 30)
TERMINAL_WINDOWS_DAYS: Final[tuple[int, ...]] = (1, 7, 30)
TERMINAL_DELAY_DAYS: Final = 7
CUSTOMER_SPAN_DAYS: Final = max(CUSTOMER_WINDOWS_DAYS)  # days D-29 .. D
TERMINAL_SPAN_DAYS: Final = max(TERMINAL_WINDOWS_DAYS)  # days D-37 .. D-8
RATIO_WINDOWS_DAYS: Final[tuple[int, ...]] = (7, 30)

ONLINE_FEATURE_NAMES: Final[tuple[str, ...]] = (
    *(name for w in CUSTOMER_WINDOWS_DAYS
      for name in (f"customer_nb_tx_{w}d", f"customer_mean_amount_{w}d")),
    *(name for w in TERMINAL_WINDOWS_DAYS
      for name in (f"terminal_nb_tx_{w}d_delay{TERMINAL_DELAY_DAYS}",
                   f"terminal_risk_{w}d_delay{TERMINAL_DELAY_DAYS}")),
    *(f"amount_over_customer_mean_{w}d" for w in RATIO_WINDOWS_DAYS),
)

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class WindowSums:
    """Raw sums per row and window (columns follow the *_WINDOWS_DAYS tuples)."""

    customer_count: I64  # (n, len(CUSTOMER_WINDOWS_DAYS))
    customer_cents: I64
    terminal_count: I64  # (n, len(TERMINAL_WINDOWS_DAYS))
    terminal_frauds: I64


def amount_cents(amount: F64) -> I64:
    """Amount in integer cents (NaN counts as 0)."""
    return np.round(np.nan_to_num(amount, nan=0.0) * 100.0).astype(np.int64)


def online_features_from_sums(sums: WindowSums, amount: F64) -> npt.NDArray[np.float32]:
    """(n, len(ONLINE_FEATURE_NAMES)) float32 from the raw window sums."""
    cols: list[F64] = []
    means: dict[int, F64] = {}
    for k, w in enumerate(CUSTOMER_WINDOWS_DAYS):
        n = sums.customer_count[:, k].astype(np.float64)
        mean = np.divide(sums.customer_cents[:, k] / 100.0, n, out=np.zeros_like(n), where=n > 0)
        means[w] = mean
        cols += [n, mean]
    for k in range(len(TERMINAL_WINDOWS_DAYS)):
        n = sums.terminal_count[:, k].astype(np.float64)
        risk = np.divide(sums.terminal_frauds[:, k].astype(np.float64), n,
                         out=np.zeros_like(n), where=n > 0)
        cols += [n, risk]
    amt = np.where(np.isfinite(amount), amount, np.nan)
    for w in RATIO_WINDOWS_DAYS:
        ratio = np.divide(amt, means[w], out=np.ones_like(amt), where=means[w] > 0)
        cols.append(np.where(np.isfinite(ratio), ratio, 1.0))
    return np.stack(cols, axis=1).astype(np.float32)


def _exclusive_day_prefix(codes: I64, day: I64, n_codes: int, n_days: int,
                          weights: I64) -> I64:
    """prefix[c, k] = sum of weights of code c on days < k (k in 0..n_days)."""
    daily = np.bincount(codes * n_days + day, weights=weights,
                        minlength=n_codes * n_days).reshape(n_codes, n_days)
    prefix = np.zeros((n_codes, n_days + 1), dtype=np.int64)
    prefix[:, 1:] = np.cumsum(np.rint(daily).astype(np.int64), axis=1)
    return prefix


def _earlier_same_group(group: I64, weights: I64) -> I64:
    """Sum of weights of the earlier rows (stream order) of the same group."""
    order = np.argsort(group, kind="stable")
    w_sorted = weights[order]
    csum = np.cumsum(w_sorted) - w_sorted
    g_sorted = group[order]
    starts = np.r_[True, g_sorted[1:] != g_sorted[:-1]]
    start_idx = np.maximum.accumulate(np.where(starts, np.arange(group.shape[0]), 0))
    base = csum[start_idx]
    out = np.empty_like(weights)
    out[order] = csum - base
    return out


def offline_window_sums(day: I64, customer: I64, terminal: I64, cents: I64,
                        is_fraud: npt.NDArray[np.bool_]) -> WindowSums:
    """Window sums for every row of a stream given in processing order.

    `day` is the UTC epoch day, `customer`/`terminal` any integer codes. Labels
    (`is_fraud`) are used only through the delayed terminal windows.
    """
    n = day.shape[0]
    if n == 0:
        empty = np.zeros((0, 3), dtype=np.int64)
        return WindowSums(empty, empty, empty, empty)
    d = day - day.min()
    n_days = int(d.max()) + 1
    _, cu = np.unique(customer, return_inverse=True)
    _, te = np.unique(terminal, return_inverse=True)
    cu, te = cu.astype(np.int64).ravel(), te.astype(np.int64).ravel()
    ones = np.ones(n, dtype=np.int64)
    c_cnt = _exclusive_day_prefix(cu, d, int(cu.max()) + 1, n_days, ones)
    c_sum = _exclusive_day_prefix(cu, d, int(cu.max()) + 1, n_days, cents)
    group = cu * n_days + d
    today_cnt = _earlier_same_group(group, ones)
    today_sum = _earlier_same_group(group, cents)
    cust_cnt, cust_sum = [], []
    for w in CUSTOMER_WINDOWS_DAYS:
        lo = np.maximum(d - w + 1, 0)
        cust_cnt.append(c_cnt[cu, d] - c_cnt[cu, lo] + today_cnt)
        cust_sum.append(c_sum[cu, d] - c_sum[cu, lo] + today_sum)
    t_cnt = _exclusive_day_prefix(te, d, int(te.max()) + 1, n_days, ones)
    t_frd = _exclusive_day_prefix(te, d, int(te.max()) + 1, n_days, is_fraud.astype(np.int64))
    hi = np.maximum(d - TERMINAL_DELAY_DAYS, 0)
    term_cnt, term_frd = [], []
    for w in TERMINAL_WINDOWS_DAYS:
        lo = np.maximum(d - TERMINAL_DELAY_DAYS - w, 0)
        term_cnt.append(t_cnt[te, hi] - t_cnt[te, lo])
        term_frd.append(t_frd[te, hi] - t_frd[te, lo])
    return WindowSums(np.stack(cust_cnt, 1), np.stack(cust_sum, 1),
                      np.stack(term_cnt, 1), np.stack(term_frd, 1))


def offline_online_features(day: I64, customer: I64, terminal: I64, amount: F64,
                            is_fraud: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
    """The primary's online features, computed in one pass over a labelled stream."""
    sums = offline_window_sums(day, customer, terminal, amount_cents(amount), is_fraud)
    return online_features_from_sums(sums, amount)
