"""The demo stream: simulated days shifted to end at `now_s`, split into history and live.

`history` warms the feature store (`warm_feature_store`: counts, and labels when
asked; the live demo sends labels through the labels topic instead, see
`labels.simulate_labels`); `live` is what `rung produce-demo` sends to Kafka, in
event-time order, with its labels for the end-of-run quality summary.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from scorers.lab.sim.convert import to_transactions
from scorers.lab.sim.simulator import DAY_S, SimConfig, SimData, simulate
from topics.schemas import Transaction


class LabelledStore(Protocol):
    def update(self, txs: Sequence[Transaction], timeout_s: float) -> None: ...

    def record_labels(self, txs: Sequence[Transaction],
                      is_fraud: Sequence[bool] | npt.NDArray[np.bool_],
                      timeout_s: float) -> None: ...


@dataclass(frozen=True, slots=True)
class LabelledStream:
    """Transactions in event-time order with their labels (scenario: see `SCENARIOS`)."""

    transactions: tuple[Transaction, ...]
    is_fraud: npt.NDArray[np.bool_]
    scenario: npt.NDArray[np.int64]

    def __iter__(self) -> Iterator[Transaction]:
        return iter(self.transactions)

    def __len__(self) -> int:
        return len(self.transactions)


def demo_stream(seed: int = 0, n_customers: int = 2000, history_days: int = 38,
                live_days: int = 1, now_s: float | None = None,
                n_terminals: int | None = None) -> tuple[LabelledStream, LabelledStream]:
    """(history, live): `history_days + live_days` simulated days ending at `now_s`.

    The default 38 history days fill every window (30 days, terminal delay 7 days).
    """
    end_s = time.time() if now_s is None else now_s
    cfg = SimConfig(n_customers=n_customers, n_terminals=n_terminals or 2 * n_customers,
                    n_days=history_days + live_days)
    data = simulate(cfg, seed)
    offset_s = end_s - (cfg.start_s + cfg.n_days * DAY_S)
    live_mask = data.day >= history_days

    def part(mask: npt.NDArray[np.bool_]) -> LabelledStream:
        rows = np.flatnonzero(mask).astype(np.int64)
        txs = to_transactions(data, id_prefix=f"demo{seed}", time_offset_s=offset_s, rows=rows)
        return LabelledStream(tuple(txs), data.is_fraud[rows], data.scenario[rows])

    return part(~live_mask), part(live_mask)


@runtime_checkable
class BulkLoadableStore(LabelledStore, Protocol):
    def bulk_load(self, txs: Sequence[Transaction],
                  is_fraud: Sequence[bool] | npt.NDArray[np.bool_], timeout_s: float) -> None: ...


def warm_feature_store(store: LabelledStore, history: LabelledStream,
                       timeout_s: float = 5.0, batch_size: int = 2000, *,
                       with_labels: bool = True) -> int:
    """Fold the history's events (and, `with_labels`, its labels) into `store`; return
    the number of events.

    A store with `bulk_load` (`RedisFeatureStore`) takes the whole history at once
    (`timeout_s` per round trip; without labels it is given all-False `is_fraud`, which
    writes no fraud counts); others get `update` (+ `record_labels`) per batch. The
    demo warms without labels: they reach the store through the labels topic.
    """
    txs = history.transactions
    fraud = history.is_fraud if with_labels else np.zeros(len(txs), dtype=np.bool_)
    if isinstance(store, BulkLoadableStore):
        store.bulk_load(txs, fraud, timeout_s)
        return len(txs)
    for lo in range(0, len(txs), batch_size):
        chunk = txs[lo:lo + batch_size]
        store.update(chunk, timeout_s)
        if with_labels:
            store.record_labels(chunk, fraud[lo:lo + batch_size], timeout_s)
    return len(txs)


def warm_from_data(store: LabelledStore, data: SimData, id_prefix: str = "hist",
                   timeout_s: float = 5.0, chunk: int = 250_000, *,
                   with_labels: bool = False) -> int:
    """`warm_feature_store` over columnar rows, converted `chunk` rows at a time (bounded
    memory for millions of history rows); return the number of events. Events only
    unless `with_labels`: the demo sends the history's labels to the labels topic."""
    for lo in range(0, len(data), chunk):
        rows = np.arange(lo, min(lo + chunk, len(data)), dtype=np.int64)
        txs = to_transactions(data, id_prefix=id_prefix, rows=rows)
        warm_feature_store(store, LabelledStream(tuple(txs), data.is_fraud[rows],
                                                 data.scenario[rows]), timeout_s,
                           with_labels=with_labels)
    return len(data)
