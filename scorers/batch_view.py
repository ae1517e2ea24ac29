"""`BatchView`: the batch-local work tiers share, each piece computed once, lazily.

- `plan`: each record's bad fields (`scorers.validation`), and `eligible(requires)`;
- `event_rows(idx)`: the event feature rows (one call of the event feature function
  for every record whose event fields are good); a bug there leaves them without;
- `model_input(idx)`: event rows + online features, fetched from the feature store
  once per record under the `feature_store` breaker (the primary's input, also what
  the cache keys on).

`Features` holds the per-ladder parts (the feature function, the store, budgets);
`BatchView` the per-batch state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from scorers import validation
from scorers.breakers import Breakers
from scorers.clock import Clock
from scorers.deadline import Deadline
from scorers.listeners import LadderListener
from scorers.ports import BoolVector, FeatureStore, FloatMatrix
from topics.schemas import Transaction

EventFeatures = Callable[[Sequence[Transaction]], FloatMatrix]
IntArray = npt.NDArray[np.intp]
EVENT_FIELDS: Final = frozenset(validation.FALLBACK_FIELDS)
FEATURE_STORE: Final = "feature_store"
# online feature state per record
_UNFETCHED, _HAVE, _MISSING, _UNAVAILABLE = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Features:
    event_features: EventFeatures
    store: FeatureStore | None
    online_count: int
    feature_timeout_s: float
    reserve_s: float  # the fetch leaves this much of the deadline to the tiers below
    clock: Clock
    listener: LadderListener
    breakers: Breakers


class BatchView:
    def __init__(self, txs: Sequence[Transaction], deadline: Deadline, features: Features) -> None:
        self.txs = txs
        self.deadline = deadline
        self.plan = validation.plan(txs)
        self.features = features
        self.scratch: dict[str, object] = {}  # per-tier batch-local state, by tier name
        self._eligible: dict[frozenset[str] | None, BoolVector] = {}
        self._event: FloatMatrix | None = None
        self._event_pos: IntArray | None = None
        self.event_failed: IntArray | None = None  # records the event features failed for
        self._online: FloatMatrix | None = None
        self._online_state: npt.NDArray[np.int8] | None = None

    def eligible(self, requires: frozenset[str] | None) -> BoolVector:
        mask = self._eligible.get(requires)
        if mask is None:
            mask = self._eligible[requires] = self.plan.eligible(requires)
        return mask

    # -- event features --------------------------------------------------------------------------
    def has_event_rows(self) -> BoolVector:
        """Records that have event rows (computing them on first use)."""
        self._compute_event_rows()
        assert self._event_pos is not None
        return self._event_pos >= 0

    def event_rows(self, idx: IntArray) -> FloatMatrix:
        """Event rows of `idx` (each must be in `has_event_rows()`)."""
        self._compute_event_rows()
        assert self._event is not None and self._event_pos is not None
        return self._event[self._event_pos[idx]]

    def _compute_event_rows(self) -> None:
        if self._event_pos is not None:
            return
        n = len(self.txs)
        self._event_pos = np.full(n, -1, dtype=np.intp)
        idx = np.flatnonzero(self.eligible(EVENT_FIELDS))
        self._event = np.zeros((0, 0), np.float32)
        if not idx.size:
            return
        f = self.features
        t0 = f.clock.monotonic()
        txs = self.txs if idx.size == n else [self.txs[i] for i in idx.tolist()]
        try:
            rows = np.asarray(f.event_features(txs), dtype=np.float32)
            if rows.ndim != 2 or rows.shape[0] != idx.size:
                raise ValueError(f"event_features returned shape {rows.shape}")
        except Exception:  # noqa: BLE001 - a feature bug leaves the records without rows
            self.event_failed = idx
            return
        finally:
            f.listener.on_stage_duration("features", f.clock.monotonic() - t0)
        self._event = rows
        self._event_pos[idx] = np.arange(idx.size)

    # -- online features -------------------------------------------------------------------------
    def model_input(self, idx: IntArray) -> tuple[FloatMatrix | None, BoolVector]:
        """Event rows + online features for `idx`, and which of them have online features;
        (None, all False) when the store is unavailable (down, slow, refused, misshaped)."""
        f = self.features
        if self._online_state is None:
            self._online_state = np.zeros(len(self.txs), dtype=np.int8)
            self._online = np.zeros((len(self.txs), f.online_count), np.float32)
        state, online = self._online_state, self._online
        assert online is not None
        todo = idx[state[idx] == _UNFETCHED]
        if todo.size:
            self._fetch(todo)
        if (state[idx] == _UNAVAILABLE).any():
            return None, np.zeros(idx.size, dtype=np.bool_)
        have = state[idx] == _HAVE
        x = np.hstack([self.event_rows(idx), online[idx]]).astype(np.float32, copy=False)
        return x, have

    def _fetch(self, idx: IntArray) -> None:
        f = self.features
        state, online = self._online_state, self._online
        assert state is not None and online is not None
        if f.online_count == 0:
            state[idx] = _HAVE
            return
        store = f.store
        if store is None:
            state[idx] = _UNAVAILABLE
            return
        txs = [self.txs[i] for i in idx.tolist()]
        n, k = len(txs), f.online_count

        def fetch(timeout_s: float) -> tuple[FloatMatrix, BoolVector]:
            raw, have_raw = store.fetch(txs, timeout_s)
            rows, have = np.asarray(raw, dtype=np.float32), np.asarray(have_raw, dtype=np.bool_)
            if rows.shape != (n, k) or have.shape != (n,):
                raise ValueError(f"feature store returned {rows.shape}, {have.shape}")
            return rows, have

        timeout_s = min(f.feature_timeout_s, self.deadline.remaining() - f.reserve_s)
        call = f.breakers.call(FEATURE_STORE, timeout_s, fetch)
        f.listener.on_stage_duration("feature_fetch", call.elapsed_s)
        if call.reason in ("timeout", "no_budget"):
            f.listener.on_deadline_miss("feature_fetch")
        if not call.ok or call.value is None:
            state[idx] = _UNAVAILABLE
            return
        rows, have = call.value
        online[idx] = rows
        state[idx] = np.where(have, _HAVE, _MISSING)
