"""Ranking metrics in numpy: AUC ROC, average precision, PR curve, Card Precision@k."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def _as_arrays(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> tuple[F64, F64]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.shape[0]} labels but {s.shape[0]} scores")
    return y, s


def roc_auc(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    y, s = _as_arrays(y_true, y_score)
    n_pos = float(y.sum())
    n_neg = float(y.shape[0] - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both classes")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1  # 1-based rank of each distinct value
    avg_rank = first_rank + (counts - 1) / 2.0
    rank_sum = float(avg_rank[inverse.ravel()][y > 0].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def precision_recall_curve(y_true: npt.ArrayLike,
                           y_score: npt.ArrayLike) -> tuple[F64, F64, F64]:
    """(precision, recall, thresholds), one point per distinct score, highest first."""
    y, s = _as_arrays(y_true, y_score)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last_of_value = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    tp = np.cumsum(y_sorted)[last_of_value]
    fp = np.cumsum(1.0 - y_sorted)[last_of_value]
    n_pos = max(float(y.sum()), 1.0)
    return tp / (tp + fp), tp / n_pos, s_sorted[last_of_value]


def average_precision(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> float:
    """Sum over thresholds of (recall step) x precision, as scikit-learn defines it."""
    precision, recall, _ = precision_recall_curve(y_true, y_score)
    steps = np.diff(np.r_[0.0, recall])
    return float((steps * precision).sum())


def card_precision_at_k(day: npt.ArrayLike, card: npt.ArrayLike, y_true: npt.ArrayLike,
                        y_score: npt.ArrayLike, k: int = 100) -> float:
    """The handbook's Card Precision@k, averaged over days.

    Per day: each card's score is its highest transaction score and it counts as
    compromised if any of its transactions is fraud; the k highest-scored cards
    are alerted; precision = compromised among them / k. Cards already detected
    (alerted and compromised) on earlier days are left out of later days. Ties
    are broken by card id.
    """
    y, s = _as_arrays(y_true, y_score)
    d = np.asarray(day).ravel()
    c = np.asarray(card).ravel()
    detected: set[int] = set()
    precisions: list[float] = []
    for today in np.unique(d):
        rows = (d == today) & ~np.isin(c, np.fromiter(detected, dtype=c.dtype, count=len(detected)))
        cards, inverse = np.unique(c[rows], return_inverse=True)
        inverse = inverse.ravel()
        best = np.full(cards.shape[0], -np.inf)
        np.maximum.at(best, inverse, s[rows])
        fraud = np.zeros(cards.shape[0], dtype=np.bool_)
        np.logical_or.at(fraud, inverse, y[rows] > 0)
        top = np.argsort(-best, kind="stable")[:k]
        precisions.append(float(fraud[top].sum()) / k)
        detected.update(cards[top][fraud[top]].tolist())
    return float(np.mean(precisions)) if precisions else 0.0
