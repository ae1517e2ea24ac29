"""Step edges: per-feature decision-tree split points, learned on the training week.

`scorers.models.nets.MLP(n_steps=k)` feeds the net, next to each normalised input,
k indicators `x >= edge`. A ReLU MLP needs large weights to draw a sharp
threshold (the handbook's "amount > 220" is one); a tree finds it at once. So for
each feature on its own, a best-first tree on the training labels (Gini
impurity, leaves of at least `min_leaf` rows) picks up to k split points. Features
with no useful split get +inf edges (indicators that are always 0). Pure numpy.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class _Split:
    gain: float
    lo: int  # the node is rows [lo, hi) of the sorted column
    hi: int
    cut: int  # left child [lo, cut), right child [cut, hi)


def _impurity(pos: F64, n: F64) -> F64:
    """Gini impurity times node size, for binary labels: 2 pos (n - pos) / n."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, 2.0 * pos * (n - pos) / n, 0.0)


def _best_split(values: F64, cum_pos: F64, lo: int, hi: int, min_leaf: int) -> _Split | None:
    """The best cut of rows [lo, hi): between distinct values, both sides >= min_leaf."""
    cuts = np.arange(lo + min_leaf, hi - min_leaf + 1)
    if cuts.size == 0:
        return None
    cuts = cuts[values[cuts - 1] < values[cuts]]
    if cuts.size == 0:
        return None
    base = cum_pos[lo]
    n, pos = float(hi - lo), cum_pos[hi] - base
    left_n = (cuts - lo).astype(np.float64)
    left_pos = cum_pos[cuts] - base
    gains = (_impurity(np.array(pos), np.array(n))
             - _impurity(left_pos, left_n) - _impurity(pos - left_pos, n - left_n))
    best = int(np.argmax(gains))
    if gains[best] <= 1e-9:
        return None
    return _Split(float(gains[best]), lo, hi, int(cuts[best]))


def feature_edges(x: F32, y: F32, n_edges: int, min_leaf: int = 20) -> F32:
    """Up to `n_edges` split points of one column, ascending, padded with +inf."""
    order = np.argsort(x, kind="stable")
    values = x[order].astype(np.float64)
    cum_pos = np.r_[0.0, np.cumsum(y[order].astype(np.float64))]
    heap: list[tuple[float, int, _Split]] = []
    tick = 0

    def push(lo: int, hi: int) -> None:
        nonlocal tick
        split = _best_split(values, cum_pos, lo, hi, min_leaf)
        if split is not None:
            heapq.heappush(heap, (-split.gain, tick, split))
            tick += 1

    push(0, values.shape[0])
    edges: list[float] = []
    while heap and len(edges) < n_edges:
        _, _, split = heapq.heappop(heap)
        # the midpoint, rounded up to a float32 strictly above the left value
        mid = np.float32((values[split.cut - 1] + values[split.cut]) / 2.0)
        if float(mid) <= values[split.cut - 1]:
            mid = np.nextafter(mid, np.float32(np.inf))
        edges.append(float(mid))
        push(split.lo, split.cut)
        push(split.cut, split.hi)
    out = np.full(n_edges, np.inf, dtype=np.float32)
    out[:len(edges)] = np.sort(np.asarray(edges, dtype=np.float32))
    return out


def step_edges(x: F32, y: F32, n_edges: int, min_leaf: int = 20) -> F32:
    """`feature_edges` of every column: an (n_features, n_edges) matrix."""
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected (n, d) features and n labels, got {x.shape}, {y.shape}")
    return np.stack([feature_edges(x[:, j], y, n_edges, min_leaf)
                     for j in range(x.shape[1])]).astype(np.float32)
