"""Reading a topic back to its end with a `read_committed` consumer.

The demo's summary, the integration tests, the chaos suite and the replay
comparison all use this to check what was really committed.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition


@dataclass(frozen=True, slots=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int


def _headers(msg: Message) -> dict[str, bytes]:
    raw = msg.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {k: v.encode() if isinstance(v, str) else v for k, v in pairs if v is not None}


def read_topic(client_conf: dict[str, Any], topic: str, timeout_s: float = 60.0,
               isolation: str = "read_committed") -> list[Record]:
    """Every committed record of `topic`, up to the end offsets seen at the start."""
    conf = dict(client_conf)
    conf.update({"group.id": f"rung-readback-{uuid.uuid4().hex[:8]}",
                 "enable.auto.commit": False, "isolation.level": isolation,
                 "enable.partition.eof": False})
    consumer = Consumer(conf)
    try:
        md = consumer.list_topics(topic, timeout=10.0)
        parts = sorted(md.topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0)[1]
                for p in parts}
        todo = {p for p in parts if ends[p] > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in todo])
        out: list[Record] = []
        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=5000, timeout=0.2):
                if msg.error() is not None:
                    continue
                out.append(Record(msg.partition() or 0, msg.offset() or 0, msg.key(),
                                  msg.value(), _headers(msg),
                                  msg.timestamp()[1]))
            positions = consumer.position([TopicPartition(topic, p) for p in todo])
            todo -= {tp.partition for tp in positions if tp.offset >= ends[tp.partition]}
        if todo:
            raise TimeoutError(f"{topic}: partitions {sorted(todo)} not read to their end "
                               f"in {timeout_s}s (an open transaction?)")
        return out
    finally:
        consumer.close()
