"""Topic administration on a live broker: create rung's topics, read counts."""

from __future__ import annotations

from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from topics.catalog import TopicNames, TopicSpec, topic_specs

log = structlog.get_logger(__name__)


def create_topics(client_conf: dict[str, Any], specs: list[TopicSpec],
                  timeout_s: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    admin = AdminClient(client_conf)
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    new = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, config=s.config)
           for s in specs if s.name not in existing]
    if not new:
        return []
    created: list[str] = []
    for name, fut in admin.create_topics(new, operation_timeout=timeout_s).items():
        try:
            fut.result(timeout_s)
            created.append(name)
        except KafkaException as exc:
            err = exc.args[0]
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise
    _wait_for_leaders(admin, [t.topic for t in new], timeout_s)
    log.info("topics_created", topics=created)
    return created


def create_rung_topics(client_conf: dict[str, Any], names: TopicNames,
                       partitions: int = 6) -> list[str]:
    return create_topics(client_conf, topic_specs(names, partitions))


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    import time

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        md = admin.list_topics(timeout=timeout_s)
        ready = all(
            n in md.topics and md.topics[n].error is None and md.topics[n].partitions
            and all(p.leader >= 0 for p in md.topics[n].partitions.values())
            for n in names)
        if ready:
            return
        time.sleep(0.1)


def end_offsets(client_conf: dict[str, Any], topic: str,
                timeout_s: float = 10.0) -> dict[int, tuple[int, int]]:
    """Low and high watermarks per partition (the high one is the end offset)."""
    conf = dict(client_conf)
    conf.update({"group.id": "rung-watermarks", "enable.auto.commit": False})
    consumer = Consumer(conf)
    try:
        md = consumer.list_topics(topic, timeout=timeout_s)
        parts = md.topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
                for p in parts}
    finally:
        consumer.close()
