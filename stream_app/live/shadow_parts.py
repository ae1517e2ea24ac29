"""The shadow's parts (`stream_app.live.shadow`): the challenger model, which records it
samples, the rolling score correlation, and the gate that keeps it out of a backlog."""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from scorers.features import EVENT_FEATURE_NAMES, PRIMARY_FEATURE_NAMES
from scorers.models.loading import load_model
from scorers.models.manifest import Thresholds
from scorers.ports import BoolVector, Model
from stream_app.config import Settings
from stream_app.pipeline import BatchOutcome
from topics.schemas import Transaction

CORRELATION_WINDOW: Final = 10_000  # compared records per version pair
BACKLOG_FULL_BATCHES: Final = 2  # full batches in a row that mean a backlog (BacklogGate)
_SCALE: Final = float(1 << 32)


# ---- the challenger ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Challenger:
    model: Model
    thresholds: Thresholds
    online: bool  # its input is event + online features (else event features only)

    @property
    def version(self) -> str:
        return self.model.version

    @classmethod
    def load(cls, model_dir: Path) -> Challenger:
        """Loaded in this process, on the CPU (the shadow's child process, or the
        worker's shadow thread with `executor=thread`)."""
        loaded = load_model(model_dir, device="cpu", role="challenger")
        model = loaded.usable
        if model is None:
            raise ValueError(f"challenger {model_dir} unavailable: {loaded.reason}")
        names = tuple(model.feature_names)
        if names not in (PRIMARY_FEATURE_NAMES, EVENT_FEATURE_NAMES):
            raise ValueError(f"challenger {model_dir}: features are neither the primary's "
                             "nor the fallback's")
        t = getattr(model, "thresholds", None)
        if not isinstance(t, Thresholds):
            raise ValueError(f"challenger {model_dir}: no decision thresholds")
        return cls(model, t, names == PRIMARY_FEATURE_NAMES)

    def close(self) -> None:
        close = getattr(self.model, "close", None)
        if close is not None:
            close()


def sampled(txs: Sequence[Transaction], share: float) -> BoolVector:
    """Which transactions the challenger scores: a hash of the id under `share`."""
    if share >= 1.0:
        return np.ones(len(txs), dtype=np.bool_)
    limit = share * _SCALE
    return np.fromiter((zlib.crc32(t.transaction_id.encode()) < limit for t in txs),
                       dtype=np.bool_, count=len(txs))


class RollingCorrelation:
    """Pearson's r over the last `window` (a, b) pairs."""

    def __init__(self, window: int = CORRELATION_WINDOW) -> None:
        self.window = window
        self._parts: deque[tuple[np.ndarray, np.ndarray]] = deque()
        self._n = 0

    def add(self, a: np.ndarray, b: np.ndarray) -> float:
        self._parts.append((a.astype(np.float64), b.astype(np.float64)))
        self._n += len(a)
        while self._parts and self._n - len(self._parts[0][0]) >= self.window:
            self._n -= len(self._parts.popleft()[0])
        xa = np.concatenate([p[0] for p in self._parts])[-self.window:]
        xb = np.concatenate([p[1] for p in self._parts])[-self.window:]
        if xa.size < 2 or xa.std() == 0.0 or xb.std() == 0.0:
            return float("nan")
        return float(np.corrcoef(xa, xb)[0, 1])


class BacklogGate:
    """Whether the worker is draining a backlog: it has not yet committed a batch under
    the maximum (`batch.max_records`) since it started, or its last `full_batches`
    batches were full, so records were waiting. While it is, the shadow drops what it is
    offered (`reason="backlog"`): a second model, its records and their writes to the
    broker would otherwise take CPU, caches and broker time from a live path that has
    none to spare (and the shadow's process is not even started before the worker has
    caught up once). Batches under the maximum (any load the worker keeps up with) pass.
    Used on the committer thread only."""

    def __init__(self, max_records: int, full_batches: int = BACKLOG_FULL_BATCHES) -> None:
        self.max_records, self.full_batches = max_records, full_batches
        self._full_run = 0
        self._caught_up = False

    def busy(self, outcome: BatchOutcome) -> bool:
        if outcome.records >= self.max_records:
            self._full_run += 1
        else:
            self._full_run, self._caught_up = 0, True
        return not self._caught_up or self._full_run >= self.full_batches


def backlog_gate(settings: Settings) -> BacklogGate | None:
    return BacklogGate(settings.batch.max_records) if settings.shadow.pause_in_backlog else None
