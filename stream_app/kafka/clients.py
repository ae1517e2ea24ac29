"""librdkafka configurations for every client rung makes, in one place.

The live worker's consumer (read_committed, cooperative-sticky, bounded prefetch)
and transactional producer, and the replay's assign()-only consumer and producer.
Common keys (bootstrap, security, pass-through) come from `KafkaSettings.client_config`.

Transactional producers never re-bootstrap (`metadata.recovery.strategy=none`, over any
pass-through): in librdkafka 2.16.0 a re-bootstrap (every known broker down at once: a
broker restart, every connection reset) decommissions the broker handles while the
coordinator cache still points at them, and the next `send_offsets_to_transaction`
then waits forever for the group coordinator, whatever its timeout (reproduction:
docs/repro/send_offsets_hang.py; docs/reliability.md, "The worker stall after broker and
network faults"). Without re-bootstrap the handles reconnect to the same addresses; the
price: a broker that leaves a metadata response (one shutting down) is dropped for good,
and the committer's abort then gives up and the worker restarts (`kafka.commit`).
"""

from __future__ import annotations

from typing import Any

from stream_app.config import Settings

# Keys every transactional producer gets, after the pass-through (see the docstring).
TRANSACTIONAL_PRODUCER: dict[str, Any] = {"metadata.recovery.strategy": "none"}


def consumer_config(settings: Settings, group_id: str | None = None) -> dict[str, Any]:
    k = settings.kafka
    conf = k.client_config()
    conf.update({
        "group.id": group_id or k.group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": int(k.session_timeout_s * 1000),
        "max.poll.interval.ms": int(k.max_poll_interval_s * 1000),
        "enable.partition.eof": False,
        # Bound what librdkafka prefetches: memory stays flat when scoring lags.
        "queued.max.messages.kbytes": 16384,
        "fetch.wait.max.ms": 10,
        "statistics.interval.ms": 5000,
    })
    return conf


def producer_config(settings: Settings, transactional_id: str | None = None) -> dict[str, Any]:
    k = settings.kafka
    conf = k.client_config()
    conf.update({
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 200_000,
    })
    if k.delivery == "exactly_once":
        conf["transactional.id"] = transactional_id or k.effective_transactional_id()
        conf["transaction.timeout.ms"] = int(k.transaction_timeout_s * 1000)
        conf.update(TRANSACTIONAL_PRODUCER)
    return conf


def replay_consumer_config(settings: Settings, group_id: str) -> dict[str, Any]:
    conf = settings.kafka.client_config()
    conf.update({
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "enable.partition.eof": False,
        "queued.max.messages.kbytes": 65536,
        "fetch.wait.max.ms": 50,
        # Never a group member, but keep librdkafka's poll check above one batch's bound.
        "max.poll.interval.ms": 900_000,
    })
    return conf


def replay_producer_config(settings: Settings, transactional_id: str) -> dict[str, Any]:
    conf = producer_config(settings)
    conf.update({"transactional.id": transactional_id,
                 "transaction.timeout.ms": int(settings.kafka.transaction_timeout_s * 1000),
                 "linger.ms": 10, "batch.size": 1_000_000, **TRANSACTIONAL_PRODUCER})
    return conf
