"""Ports: the protocols the ladder depends on, one per dependency.

Every adapter (torch model, Redis cache, in-memory cache, Redis feature
store, ...) implements one of these; the contract suites in
tests/unit/scorers run unchanged against every implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from topics.schemas import Transaction

FloatMatrix = npt.NDArray[np.float32]
FloatVector = npt.NDArray[np.float32]
BoolVector = npt.NDArray[np.bool_]


@runtime_checkable
class Model(Protocol):
    """A scoring model: a matrix of features in, one fraud probability per row out.

    `predict` may raise (the ladder treats that as a model failure) and may
    return NaN/inf rows (post-validation sends those rows down the ladder).
    """

    @property
    def version(self) -> str: ...

    @property
    def feature_names(self) -> tuple[str, ...]: ...

    def predict(self, features: FloatMatrix) -> FloatVector: ...


@dataclass(frozen=True, slots=True)
class CachedPrediction:
    score: float
    confidence: float
    stored_at_s: float  # monotonic-free: the writer's clock, compared with TTLs only
    stale: bool = False


class PredictionCache(Protocol):
    """Prediction cache keyed by model version + input hash."""

    def get_many(self, keys: Sequence[str], timeout_s: float) -> list[CachedPrediction | None]: ...

    def put_many(
        self, items: Sequence[tuple[str, CachedPrediction]], timeout_s: float
    ) -> None: ...


class FeatureStore(Protocol):
    """Online aggregates for the primary model.

    `fetch` returns a float32 matrix (n, len(ONLINE_FEATURE_NAMES)) and a mask of
    rows whose features are available; rows not available go to the fallback.
    `update` folds events into the aggregates with a plain additive merge (warm-ups,
    benchmarks, tests). The ladder only fetches: the live stream is applied after
    its Kafka transaction committed, exactly once, through `AppliedFeatureStore`.
    """

    def fetch(
        self, txs: Sequence[Transaction], timeout_s: float
    ) -> tuple[FloatMatrix, BoolVector]: ...

    def update(self, txs: Sequence[Transaction], timeout_s: float) -> None: ...


@dataclass(frozen=True, slots=True)
class OffsetRange:
    """The records [start, end) of one source partition and what they add: decoded
    `events` (customer and terminal counts) and `frauds`, the (terminal id, event time)
    of fraud labels (terminal fraud counts). Records that add nothing (dead letters,
    events without keys, genuine labels) are covered all the same."""

    start: int
    end: int
    events: Sequence[Transaction] = ()
    frauds: Sequence[tuple[str, float]] = ()

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"range [{self.start}, {self.end}) runs backwards")


class AppliedFeatureStore(Protocol):
    """A feature store that applies a Kafka partition's records exactly once.

    `source` names the partition (`<topic>:<partition>`); its watermark is the next
    offset to apply (None: nothing applied yet). `apply_ranges` applies consecutive
    ranges, each atomically with moving the watermark from its start to its end and
    only if the stored watermark is the expected one; it returns the watermark stored
    afterwards, from which the caller sees how far it got (see `scorers.feature_store`).
    """

    def watermarks(self, sources: Sequence[str], timeout_s: float) -> list[int | None]: ...

    def apply_ranges(self, source: str, expected: int | None, ranges: Sequence[OffsetRange],
                     timeout_s: float) -> int | None: ...
