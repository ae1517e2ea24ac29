"""What one committed batch tells the metrics, shared by every runtime.

Called once per committed batch (never for an aborted one), so the counters
say what was really delivered. Tier counts are aggregated per batch: a few
metric calls per batch, not per record.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

from topics.schemas import Score, Transaction


class BatchMetrics(Protocol):
    def records_in(self, topic: str, n: int) -> None: ...
    def dead_lettered(self, reason: str, n: int = 1) -> None: ...
    def reviewed(self, n: int) -> None: ...
    def scores_out(self, tier: str, model_version: str, n: int) -> None: ...
    def stage_duration(self, stage: str, seconds: float) -> None: ...
    def event_to_score_latency(self, seconds: Any) -> None: ...


def report_batch(metrics: BatchMetrics, topic: str, *, n_records: int,
                 txs: Sequence[Transaction], scores: Sequence[Score], n_dead: int,
                 n_reviews: int, stages: dict[str, float], now_wall_s: float) -> None:
    metrics.records_in(topic, n_records)
    if n_dead:
        metrics.dead_lettered("decode", n_dead)
    if n_reviews:
        metrics.reviewed(n_reviews)
    for (tier, version), n in Counter((s.tier, s.model_version) for s in scores).items():
        metrics.scores_out(tier, version, n)
    for stage, seconds in stages.items():
        metrics.stage_duration(stage, seconds)
    lat = [now_wall_s - t.event_time_s for t in txs if t.event_time_s is not None]
    if lat:
        metrics.event_to_score_latency(lat)
