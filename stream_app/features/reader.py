"""Reading a partition's missing range back: an assign()-only, read_committed consumer.

It never joins a group and never commits; it only exists so that a feature update
that failed is retried from Kafka, not from memory (`stream_app.features.applier`).
One consumer per feed, reassigned for each read.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from stream_app.kafka.records import SourceRecord, from_message


def reader_config(client_conf: dict[str, Any]) -> dict[str, Any]:
    conf = dict(client_conf)
    conf.update({
        "group.id": f"rung-feature-reader-{uuid.uuid4().hex[:8]}",  # never joined
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",  # a range already deleted by retention is gone
        "isolation.level": "read_committed",
        "enable.partition.eof": False,
        "fetch.wait.max.ms": 10,
        "queued.max.messages.kbytes": 16384,
    })
    return conf


class KafkaRangeReader:
    """`stream_app.features.applier.RangeReader` over one confluent-kafka consumer."""

    def __init__(self, client_conf: dict[str, Any]) -> None:
        self._consumer = Consumer(reader_config(client_conf))

    def read(self, topic: str, partition: int, start: int, end: int, max_records: int,
             timeout_s: float) -> tuple[list[SourceRecord], int]:
        consumer = self._consumer
        tp = TopicPartition(topic, partition, start)
        consumer.assign([tp])
        out: list[SourceRecord] = []
        complete = start
        deadline = time.monotonic() + timeout_s
        try:
            while len(out) < max_records and complete < end:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                for msg in consumer.consume(num_messages=min(1000, max_records - len(out)),
                                            timeout=min(left, 0.1)):
                    if msg.error() is not None:
                        continue
                    rec = from_message(msg)
                    if rec.offset >= end:
                        complete = end
                        break
                    out.append(rec)
                    complete = rec.offset + 1
                if complete < end:  # transaction markers occupy offsets too
                    [pos] = consumer.position([TopicPartition(topic, partition)])
                    if pos.offset >= end:
                        complete = end
        finally:
            try:
                consumer.unassign()
            except KafkaException:
                pass
        return out, complete

    def close(self) -> None:
        self._consumer.close()
