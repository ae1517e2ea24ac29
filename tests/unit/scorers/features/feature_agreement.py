"""Shared helpers: one event sequence, features computed offline and online."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from scorers.feature_store import BucketFeatureStore
from scorers.features import offline_online_features
from scorers.lab.sim import SimConfig, SimData, simulate, to_transactions

CONFIG = SimConfig(n_customers=120, n_terminals=240, n_days=45)


def sequence(seed: int = 3) -> SimData:
    return simulate(CONFIG, seed)


def offline(data: SimData) -> npt.NDArray[np.float32]:
    day = (data.event_time_s // 86_400).astype(np.int64)
    return offline_online_features(day, data.customer, data.terminal, data.amount, data.is_fraud)


def online(data: SimData, store: BucketFeatureStore, seed: int = 0,
           max_batch: int = 60) -> npt.NDArray[np.float32]:
    """Stream `data` through `store` in random-size batches: fetch, update, then labels."""
    txs = to_transactions(data)
    rng = np.random.default_rng(seed)
    out, lo = [], 0
    while lo < len(txs):
        hi = lo + int(rng.integers(1, max_batch))
        batch = txs[lo:hi]
        features, available = store.fetch(batch, timeout_s=2.0)
        assert available.all()
        out.append(features)
        store.update(batch, timeout_s=2.0)
        store.record_labels(batch, data.is_fraud[lo:hi], timeout_s=2.0)
        lo = hi
    return np.concatenate(out)
