"""The label feed: fraud labels folded into the terminal fraud counts, exactly once.

A thread in the worker process (`LabelFeed.start`) consumes `<prefix>.labels` with
its own consumer group (`<group>-labels`, read_committed) and hands each partition's
records to an `OffsetApplier` with the same watermark mechanism as the transactions
(`<prefix>:applied:<labels topic>:<partition>` in the feature store). A fraud label
(`Label.is_fraud`: fraud or chargeback) adds one to the fraud count of its terminal
on its event's day (`terminal_id`, `event_time_s`); a genuine label, a label without
a terminal or an event time (`unattributed`) and an undecodable one only move the
watermark (counted and, for undecodable ones, logged): none stalls its partition.
After applying, the consumer commits the watermark as its group offset; the
watermark, not the group offset, is the source of truth (a record below it is
skipped, a gap above the committed offset is read back). When the store fails, the
consumer seeks back to the watermark and waits for the applier's back-off.

Semantics. The terminal risk windows of an event on day D count frauds among the
terminal's events of days D-7-w .. D-8 (`scorers.features.online`): a label adds to
the fraud count of its event's day whenever it arrives. The offline definition
assumes every label is known 7 days after its event; a label arriving later is
counted online only from its arrival on (events scored before it did not see it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from stream_app.features.applier import Entry, OffsetApplier
from stream_app.kafka.errors import DEAD_LETTER_ERRORS
from stream_app.kafka.records import SourceRecord, from_message
from stream_app.live.gil import Pacer
from topics.codec import decode_label

log = structlog.get_logger(__name__)

FEED = "labels"
POLL_RECORDS = 1000
POLL_TIMEOUT_S = 0.5


def decode_label_entry(record: SourceRecord) -> Entry:
    try:
        label = decode_label(record.value)
    except DEAD_LETTER_ERRORS as exc:
        log.warning("label_undecodable", partition=record.partition, offset=record.offset,
                    error=str(exc)[:200])
        return Entry(record.offset, "undecodable")
    if not label.is_fraud:
        return Entry(record.offset, "genuine")
    if label.terminal_id is None or label.event_time_s is None:
        return Entry(record.offset, "unattributed")
    return Entry(record.offset, "applied", fraud=(label.terminal_id, label.event_time_s))


class LabelFeed:
    """One label consumer and its loop; `step` is one poll's worth (tests drive it)."""

    def __init__(self, consumer_conf: dict[str, Any], topic: str, applier: OffsetApplier,
                 *, on_close: Callable[[], None] | None = None,
                 busy_share: float = 1.0) -> None:
        self.consumer_conf = consumer_conf
        self.pacer = Pacer(busy_share)  # stream_app.live.gil
        self.topic = topic
        self.applier = applier
        self._on_close = on_close
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rung-label-feed", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        consumer: Consumer | None = None
        try:
            consumer = Consumer(self.consumer_conf)
            consumer.subscribe([self.topic], on_revoke=self._on_revoke, on_lost=self._on_revoke)
            log.info("label_feed_started", topic=self.topic)
            while not self._stop.is_set():
                self.pacer.start()
                self.step(consumer, consumer.consume(POLL_RECORDS, POLL_TIMEOUT_S))
                self._stop.wait(self.pacer.pause_s())  # a backlog waits, the loop does not
        except Exception as exc:  # noqa: BLE001 - labels never take the scorer down
            log.error("label_feed_failed", error=repr(exc), exc_info=True)
        finally:
            if consumer is not None:
                try:
                    consumer.close()
                except (KafkaException, RuntimeError) as exc:
                    log.warning("label_consumer_close_failed", error=str(exc))
            if self._on_close is not None:
                self._on_close()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.applier.forget((tp.topic, tp.partition) for tp in partitions)

    def step(self, consumer: Any, msgs: list[Message]) -> None:
        """Apply one poll's records per partition, then commit the watermarks."""
        parts: dict[tuple[str, int], list[Entry]] = {}
        for msg in msgs:
            if msg.error() is not None:
                log.warning("label_consumer_error", error=str(msg.error()))
                continue
            rec = from_message(msg)
            parts.setdefault((rec.topic, rec.partition), []).append(decode_label_entry(rec))
        commits: list[TopicPartition] = []
        for (topic, partition), entries in parts.items():
            entries.sort(key=lambda e: e.offset)
            end = entries[-1].offset + 1
            done = self.applier.apply(topic, partition, entries, end)
            mark = self.applier.watermark(topic, partition)
            if mark is not None:
                commits.append(TopicPartition(topic, partition, mark))
            if not done:  # read them again once the store answers
                back = mark if mark is not None and mark < end else entries[0].offset
                try:
                    consumer.seek(TopicPartition(topic, partition, back))
                except KafkaException as exc:
                    log.info("label_rewind_skipped", partition=partition, error=str(exc))
        if commits:
            try:
                consumer.commit(offsets=commits, asynchronous=False)
            except KafkaException as exc:  # the watermark is the truth; next time
                log.info("label_commit_failed", error=str(exc))
        if self.applier.in_backoff():
            self._stop.wait(self.applier.config.retry_s)
