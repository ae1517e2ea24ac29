"""Prometheus metrics of the model registry, hot swaps and the canary (on a `Metrics`' registry).

Kept out of `stream_app.metrics` (which is at its size limit) the way `QualityMetrics`
and `ShadowMetrics` are separate classes: `ModelMetrics(metrics.registry)`.

- `rung_model_swaps_total{role}`: slots published between batches (role: champion |
  canary; a canary start, change or removal is a canary swap).
- `rung_model_refused_total{version,reason}`: versions that failed to load, verify their
  checksum or warm up; the old slot kept serving (reason: integrity | warm_up | registry).
- `rung_model_live_version_info{role,version}`: 1 for the versions serving now.
- `rung_canary_fraction`: the fraction of entities routed to the candidate (0: none).
- `rung_canary_rollbacks_total{version,reason}`: automatic rollbacks (error_rate |
  review_rate).
- per model version, what the primary tier did with the rows routed to it:
  `rung_model_rows_total{model_version,outcome}` (outcome: answered | review | failed),
  `rung_model_score` (histogram of answered scores), `rung_model_forward_seconds`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SCORE_BUCKETS: Final = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
FORWARD_BUCKETS_S: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25,
                            0.5, 1.0)
ROLES: Final = ("champion", "canary")


class ModelMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self._swaps = Counter("rung_model_swaps_total",
                              "Model slots published between batches, by role.", ["role"],
                              registry=r)
        self._refused = Counter("rung_model_refused_total",
                                "Model versions refused (load, checksum or warm-up failed); "
                                "the serving version kept serving.", ["version", "reason"],
                                registry=r)
        self._live = Gauge("rung_model_live_version_info",
                           "1 for each model version serving now, by role.",
                           ["role", "version"], registry=r)
        self._fraction = Gauge("rung_canary_fraction",
                               "Fraction of entities routed to the canary candidate.",
                               registry=r)
        self._rollbacks = Counter("rung_canary_rollbacks_total",
                                  "Automatic canary rollbacks, by candidate and rule.",
                                  ["version", "reason"], registry=r)
        self._rows = Counter("rung_model_rows_total",
                             "Rows routed to a model version in the primary tier, by outcome.",
                             ["model_version", "outcome"], registry=r)
        self._score = Histogram("rung_model_score", "Scores answered by a model version.",
                                ["model_version"], buckets=SCORE_BUCKETS, registry=r)
        self._forward = Histogram("rung_model_forward_seconds",
                                  "Forward time of one batch's rows on a model version.",
                                  ["model_version"], buckets=FORWARD_BUCKETS_S, registry=r)
        self._live_keys: set[tuple[str, str]] = set()
        for role in ROLES:
            self._swaps.labels(role)
        self._fraction.set(0.0)

    def swapped(self, role: str) -> None:
        self._swaps.labels(role).inc()

    def refused(self, version: str, reason: str) -> None:
        self._refused.labels(version, reason).inc()

    def set_live(self, champion: str, candidate: str, fraction: float) -> None:
        now = {("champion", champion)} | ({("canary", candidate)} if candidate else set())
        for key in self._live_keys - now:
            self._live.remove(*key)
        for key in now:
            self._live.labels(*key).set(1)
        self._live_keys = now
        self._fraction.set(fraction if candidate else 0.0)

    def rolled_back(self, version: str, reason: str) -> None:
        self._rollbacks.labels(version, reason).inc()

    def version_rows(self, version: str, *, answered: int, review: int, failed: int) -> None:
        for outcome, n in (("answered", answered), ("review", review), ("failed", failed)):
            if n:
                self._rows.labels(version, outcome).inc(n)

    def version_scores(self, version: str, scores: Iterable[npt.NDArray[np.float64]]) -> None:
        h = self._score.labels(version)
        for part in scores:
            for value in part.tolist():
                h.observe(value)

    def version_forward(self, version: str, seconds: Iterable[float]) -> None:
        h = self._forward.labels(version)
        for s in seconds:
            if s > 0:
                h.observe(s)
