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
    `update` folds scored events into the aggregates (after scoring, so an event
    never sees itself).
    """

    def fetch(
        self, txs: Sequence[Transaction], timeout_s: float
    ) -> tuple[FloatMatrix, BoolVector]: ...

    def update(self, txs: Sequence[Transaction], timeout_s: float) -> None: ...
