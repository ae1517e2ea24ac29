"""`_add_earlier_in_batch` (grouped pairs) gives exactly what the all-pairs form gave."""

from __future__ import annotations

import numpy as np
import pytest

from scorers.feature_store import _add_earlier_in_batch
from scorers.features.online import CUSTOMER_WINDOWS_DAYS, TERMINAL_WINDOWS_DAYS, WindowSums


def _all_pairs(sums: WindowSums, customer: np.ndarray, day: np.ndarray,
               cents: np.ndarray) -> None:
    """The previous implementation: every pair of repeated rows, 1,024 rows at a time."""
    rep = np.flatnonzero(np.bincount(customer)[customer] > 1)
    code, day, cents = customer[rep], day[rep], cents[rep]
    for lo in range(0, rep.shape[0], 1024):
        hi = min(lo + 1024, rep.shape[0])
        lag = day[lo:hi, None] - day[None, :hi]
        pair = ((code[lo:hi, None] == code[None, :hi]) & (lag >= 0)
                & (np.arange(hi)[None, :] < np.arange(lo, hi)[:, None]))
        for k, w in enumerate(CUSTOMER_WINDOWS_DAYS):
            m = pair & (lag < w)
            sums.customer_count[rep[lo:hi], k] += m.sum(axis=1)
            sums.customer_cents[rep[lo:hi], k] += m.astype(np.int64) @ cents[:hi]


def _sums(rng: np.random.Generator, n: int) -> WindowSums:
    c, t = len(CUSTOMER_WINDOWS_DAYS), len(TERMINAL_WINDOWS_DAYS)
    return WindowSums(rng.integers(0, 50, (n, c)), rng.integers(0, 10_000, (n, c)),
                      rng.integers(0, 50, (n, t)), rng.integers(0, 5, (n, t)))


@pytest.mark.parametrize(("n", "customers", "days"), [(1, 1, 1), (7, 2, 3), (300, 40, 40),
                                                      (2500, 900, 10), (3000, 3000, 5)])
def test_grouped_pairs_match_all_pairs(n: int, customers: int, days: int) -> None:
    rng = np.random.default_rng(n)
    raw = rng.integers(0, customers, n)
    customer = np.unique(raw, return_inverse=True)[1].astype(np.int64)
    day = rng.integers(0, days, n).astype(np.int64)  # out of order on purpose
    cents = rng.integers(1, 100_000, n).astype(np.int64)
    base = _sums(rng, n)
    want = WindowSums(*(a.copy() for a in (base.customer_count, base.customer_cents,
                                           base.terminal_count, base.terminal_frauds)))
    _all_pairs(want, customer, day, cents)
    _add_earlier_in_batch(base, customer, day, cents)
    np.testing.assert_array_equal(base.customer_count, want.customer_count)
    np.testing.assert_array_equal(base.customer_cents, want.customer_cents)
