"""Capturing the live primary's online features for the shadow (`stream_app.live.shadow`).

`FeatureTap` wraps the live ladder's feature store at build time
(`stream_app.wiring.build_scorer`, through `tap_for(store, settings)`): every fetch passes
through unchanged and the tap keeps a reference to the rows it returned (arrays the
ladder made anyway; one deque append per batch on the scoring thread, nothing
copied). `CapturedFeatures`, on the shadow thread, indexes them by transaction id,
so the challenger and the drift monitor see exactly the inputs the champion saw.
Why not read Redis again after the commit: see the shadow module's docstring.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from scorers.ports import BoolVector, FeatureStore, FloatMatrix
from stream_app.config import Settings
from topics.schemas import Transaction

_TAPS: weakref.WeakKeyDictionary[Any, FeatureTap] = weakref.WeakKeyDictionary()


class FeatureTap:
    """A `FeatureStore` that passes through and keeps its last fetches for the shadow."""

    def __init__(self, inner: FeatureStore, max_fetches: int = 64) -> None:
        self.inner = inner
        self._fetches: deque[tuple[Sequence[Transaction], FloatMatrix, BoolVector]] = deque(
            maxlen=max_fetches)

    def fetch(self, txs: Sequence[Transaction], timeout_s: float) -> tuple[FloatMatrix, BoolVector]:
        rows, have = self.inner.fetch(txs, timeout_s)
        self._fetches.append((txs, rows, have))
        return rows, have

    def update(self, txs: Sequence[Transaction], timeout_s: float) -> None:
        self.inner.update(txs, timeout_s)

    def drain(self) -> list[tuple[Sequence[Transaction], FloatMatrix, BoolVector]]:
        out = []
        while True:
            try:
                out.append(self._fetches.popleft())
            except IndexError:
                return out


class CapturedFeatures:
    """The tap's rows by transaction id, on the shadow thread; bounded, oldest out."""

    def __init__(self, tap: FeatureTap | None, max_records: int) -> None:
        self.tap, self.max_records = tap, max_records
        self._rows: dict[str, tuple[FloatMatrix, int, bool]] = {}

    def add(self, fetches: Sequence[tuple[Sequence[str], FloatMatrix, BoolVector]]) -> None:
        """Fetches as (transaction ids, rows, have); the oldest go past `max_records`."""
        for ids, rows, have in fetches:
            for i, tx_id in enumerate(ids):
                self._rows[tx_id] = (rows, i, bool(have[i]))
        while len(self._rows) > self.max_records:
            del self._rows[next(iter(self._rows))]

    def take(self, txs: Sequence[Transaction], width: int) -> tuple[FloatMatrix, BoolVector,
                                                                     BoolVector]:
        """(online rows, captured, have) for `txs`; each capture is used once."""
        if self.tap is not None:
            self.add([([t.transaction_id for t in fetched], rows, have)
                      for fetched, rows, have in self.tap.drain()])
        out = np.zeros((len(txs), width), dtype=np.float32)
        captured = np.zeros(len(txs), dtype=np.bool_)
        have_out = np.zeros(len(txs), dtype=np.bool_)
        for j, tx in enumerate(txs):
            hit = self._rows.pop(tx.transaction_id, None)
            if hit is not None:
                rows, i, ok = hit
                out[j], captured[j], have_out[j] = rows[i], True, ok
        return out, captured, have_out


def tap_for(store: FeatureStore, settings: Settings) -> FeatureTap | None:
    """The live ladder's tap when a challenger or drift is configured: it keeps as many
    fetches as the shadow's queue can hold batches (two per batch), and a few more."""
    s = settings.shadow
    if s.model_dir is None and not s.drift:
        return None
    return FeatureTap(store, max_fetches=2 * s.queue_batches + 8)


def register_tap(ladder: object, tap: FeatureTap) -> None:
    """Called by `stream_app.wiring.build_scorer` for a live ladder built with a tap."""
    _TAPS[ladder] = tap


def tap_of(ladder: object) -> FeatureTap | None:
    try:
        return _TAPS.get(ladder)
    except TypeError:  # not weakly referenceable: not a ladder built with a tap
        return None
