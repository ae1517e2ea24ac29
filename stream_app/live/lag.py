"""Consumer lag as the worker reports it (`rung_consumer_lag_records`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import structlog
from confluent_kafka import Consumer, KafkaException, TopicPartition

log = structlog.get_logger(__name__)


class LagMetrics(Protocol):
    def set_consumer_lag(self, topic: str, partition: int, lag: int) -> None: ...


def report_consumer_lag(consumer: Consumer, assigned: Iterable[tuple[str, int]],
                        metrics: LagMetrics) -> None:
    """Per assigned partition: the high watermark librdkafka last saw (cached, no request)
    minus the consumer's position. Nothing when the client cannot say (logged at debug)."""
    tps = [TopicPartition(t, p) for t, p in sorted(assigned)]
    if not tps:
        return
    try:
        for tp in consumer.position(tps):
            _low, high = consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset >= 0:
                metrics.set_consumer_lag(tp.topic, tp.partition, max(0, high - tp.offset))
    except KafkaException as exc:
        log.debug("lag_unavailable", error=str(exc))
