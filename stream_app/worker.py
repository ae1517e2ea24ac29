"""The confluent-kafka worker: poll → micro-batch → score → one transaction.

Loop, one batch at a time:

1. collect: `consume()` until the batch is full, its linger time since the
   first record has passed, or its deadline leaves no more room (consume can
   return early, so the loop keeps calling it);
2. decode each record (bad bytes → dead-letter), score the rest through the
   ladder under the batch's deadline (per-record degradation happens there);
3. in one Kafka transaction: produce every score (keyed by transaction id,
   headers naming tier and model version), every review copy and every dead
   letter, send the consumer's offsets, commit.

Errors follow `stream_app.errors`: abortable → abort and rewind to the batch's
first offsets; retriable → retry within the transaction budget; fatal → exit
non-zero. No transaction is ever open while `consume()` runs, so a rebalance
never meets an open transaction: revoked partitions just have their buffered,
unprocessed records dropped (the new owner reads them from the committed
offsets). At-least-once mode uses the idempotent producer and a synchronous
offset commit after the produce is flushed.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import structlog
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from scorers.clock import Clock, SystemClock
from scorers.deadline import Deadline
from stream_app.config import Settings
from stream_app.errors import (
    FatalWorkerError,
    Policy,
    classify_consumer_error,
    classify_transaction_error,
)
from stream_app.records import (
    DecodedBatch,
    dead_letter_record,
    decode_batch,
    first_offsets,
    needs_review,
    next_offsets,
    score_record,
)
from topics.schemas import Score, Transaction

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_FATAL = 3


class BatchScorer(Protocol):
    def score_batch(self, txs: Sequence[Transaction], deadline: Deadline) -> list[Score]: ...


class WorkerMetrics(Protocol):
    """What the worker reports; `stream_app.metrics.Metrics` implements it."""

    def records_in(self, topic: str, n: int) -> None: ...
    def dead_lettered(self, reason: str, n: int = 1) -> None: ...
    def reviewed(self, n: int) -> None: ...
    def scores_out(self, tier: str, model_version: str, n: int) -> None: ...
    def stage_duration(self, stage: str, seconds: float) -> None: ...
    def event_to_score_latency(self, seconds: Any) -> None: ...
    def transaction_aborted(self, reason: str) -> None: ...
    def set_assigned_partitions(self, n: int) -> None: ...
    def set_fatal(self, reason: str | None) -> None: ...
    def update_from_librdkafka_stats(self, stats_json: str) -> None: ...


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
    return conf


class Worker:
    """One scoring worker: a consumer in the group, a (transactional) producer."""

    def __init__(self, settings: Settings, scorer: BatchScorer, *,
                 metrics: WorkerMetrics | None = None, clock: Clock | None = None,
                 shutdown_timeout_s: float = 10.0, replay_id: str | None = None) -> None:
        self.settings = settings
        self.scorer = scorer
        self.metrics = metrics
        self.clock = clock or SystemClock()
        self.shutdown_timeout_s = shutdown_timeout_s
        self.names = settings.topics.names()
        self.eos = settings.kafka.delivery == "exactly_once"
        self._stop = threading.Event()
        self._assigned: set[tuple[str, int]] = set()
        self._buffer: list[Message] = []
        self.fatal_reason: str | None = None
        self.batches_committed = 0
        self.records_committed = 0
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None

    # ---- lifecycle ---------------------------------------------------------
    @property
    def assigned_partitions(self) -> int:
        return len(self._assigned)

    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: object) -> None:
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            self.stop()
            _start_watchdog(self.shutdown_timeout_s)
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> int:
        """Run until stopped; return the process exit code."""
        cconf = consumer_config(self.settings)
        if self.metrics is not None:
            cconf["stats_cb"] = self.metrics.update_from_librdkafka_stats
        self._consumer = Consumer(cconf)
        self._producer = Producer(producer_config(self.settings))
        try:
            if self.eos:
                self._producer.init_transactions(self.settings.kafka.transaction_timeout_s)
            self._consumer.subscribe([self.names.transactions], on_assign=self._on_assign,
                                     on_revoke=self._on_revoke, on_lost=self._on_lost)
            log.info("worker_started", topic=self.names.transactions, eos=self.eos,
                     transactional_id=self.settings.kafka.effective_transactional_id())
            while not self._stop.is_set():
                batch = self._collect()
                if batch:
                    self._process(batch)
            return EXIT_OK
        except FatalWorkerError as exc:
            self.fatal_reason = str(exc)
            if self.metrics is not None:
                self.metrics.set_fatal(str(exc))
            log.error("worker_fatal", error=str(exc))
            return EXIT_FATAL
        finally:
            self._close()

    def _close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5.0)
        if self._consumer is not None:
            try:
                self._consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("consumer_close_failed", error=str(exc))
        log.info("worker_stopped", batches=self.batches_committed, records=self.records_committed)

    # ---- rebalancing ---------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.update((tp.topic, tp.partition) for tp in partitions)
        self._report_assignment()
        log.info("partitions_assigned", partitions=[tp.partition for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._drop(partitions)
        log.info("partitions_revoked", partitions=[tp.partition for tp in partitions])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._drop(partitions)
        log.warning("partitions_lost", partitions=[tp.partition for tp in partitions])

    def _drop(self, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned -= gone
        self._buffer = [m for m in self._buffer if (m.topic(), m.partition()) not in gone]
        self._report_assignment()

    def _report_assignment(self) -> None:
        if self.metrics is not None:
            self.metrics.set_assigned_partitions(len(self._assigned))

    # ---- collect -------------------------------------------------------------
    def _collect(self) -> list[Message]:
        """Fill one batch: size, linger since the first record, or stop."""
        assert self._consumer is not None
        b = self.settings.batch
        first_at: float | None = None
        self._buffer = []
        while len(self._buffer) < b.max_records and not self._stop.is_set():
            now = self.clock.monotonic()
            if first_at is not None and now - first_at >= b.linger_s:
                break
            wait = b.poll_timeout_s if first_at is None else max(0.0, first_at + b.linger_s - now)
            msgs = self._consumer.consume(num_messages=b.max_records - len(self._buffer),
                                          timeout=wait)
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if classify_consumer_error(err) is Policy.FATAL:
                        raise FatalWorkerError(f"consumer error: {err}")
                    log.warning("consumer_error", error=str(err))
                    continue
                if first_at is None:
                    first_at = self.clock.monotonic()
                self._buffer.append(msg)
        self._batch_started_at = first_at if first_at is not None else self.clock.monotonic()
        return self._buffer

    # ---- process -------------------------------------------------------------
    def _process(self, messages: list[Message]) -> None:
        t0 = self.clock.monotonic()
        batch = decode_batch(messages)
        t1 = self.clock.monotonic()
        deadline = Deadline(self.clock, self._batch_started_at + self.settings.batch.deadline_s)
        scores = self.scorer.score_batch(batch.txs, deadline) if batch.txs else []
        if len(scores) != len(batch.txs):
            raise FatalWorkerError(f"scorer returned {len(scores)} results for {len(batch.txs)}")
        t2 = self.clock.monotonic()
        if self._commit_batch(batch, scores):
            self._account(batch, scores, (t1 - t0, t2 - t1, self.clock.monotonic() - t2))

    def _produce_all(self, batch: DecodedBatch, scores: list[Score]) -> int:
        assert self._producer is not None
        names = self.names
        reviews = 0
        for score in scores:
            key, value, headers = score_record(score)
            self._produce(names.scores, key, value, headers)
            if needs_review(score):
                self._produce(names.review, key, value, headers)
                reviews += 1
        for dl in batch.dead:
            key_dl, value_dl, headers_dl = dead_letter_record(dl)
            self._produce(names.dead_letter, key_dl, value_dl, headers_dl)
        return reviews

    def _produce(self, topic: str, key: bytes | None, value: bytes,
                 headers: list[tuple[str, bytes]]) -> None:
        assert self._producer is not None
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers)
                return
            except BufferError:
                # Local queue full: serve delivery reports until there is room.
                self._producer.poll(0.05)

    def _commit_batch(self, batch: DecodedBatch, scores: list[Score]) -> bool:
        """Produce and commit one batch; False when it was aborted and rewound."""
        assert self._producer is not None and self._consumer is not None
        offsets = next_offsets(batch.messages)
        if not self.eos:
            self._batch_reviews = self._produce_all(batch, scores)
            remaining = self._producer.flush(self.settings.kafka.transaction_timeout_s)
            if remaining:
                raise FatalWorkerError(f"{remaining} records not delivered; not committing")
            self._consumer.commit(offsets=offsets, asynchronous=False)
            return True
        try:
            self._producer.begin_transaction()
            self._batch_reviews = self._produce_all(batch, scores)
            budget_end = time.monotonic() + self.settings.kafka.transaction_timeout_s
            self._retrying(lambda t: self._producer.send_offsets_to_transaction(  # type: ignore[union-attr]
                offsets, self._consumer.consumer_group_metadata(), t), budget_end)  # type: ignore[union-attr]
            self._retrying(lambda t: self._producer.commit_transaction(t), budget_end)  # type: ignore[union-attr]
            return True
        except KafkaException as exc:
            policy = classify_transaction_error(exc)
            if policy is Policy.FATAL:
                raise FatalWorkerError(f"transaction failed fatally: {exc}") from exc
            self._abort_and_rewind(batch.messages, str(exc))
            return False

    def _retrying(self, call: Callable[[float], None], budget_end: float) -> None:
        while True:
            left = budget_end - time.monotonic()
            try:
                call(max(1.0, left))
                return
            except KafkaException as exc:
                if classify_transaction_error(exc) is not Policy.RETRY or left <= 0:
                    raise
                log.warning("transaction_retry", error=str(exc))

    def _abort_and_rewind(self, messages: Sequence[Message], reason: str) -> None:
        assert self._producer is not None and self._consumer is not None
        log.warning("transaction_aborted", reason=reason)
        if self.metrics is not None:
            self.metrics.transaction_aborted("abortable")
        try:
            self._producer.abort_transaction(self.settings.kafka.transaction_timeout_s)
        except KafkaException as exc:
            if classify_transaction_error(exc) is Policy.FATAL:
                raise FatalWorkerError(f"abort failed fatally: {exc}") from exc
        for tp in first_offsets(messages):
            if (tp.topic, tp.partition) in self._assigned:
                self._consumer.seek(tp)

    def _account(self, batch: DecodedBatch, scores: list[Score],
                 stages: tuple[float, float, float]) -> None:
        self.batches_committed += 1
        self.records_committed += batch.size
        m = self.metrics
        if m is None:
            return
        m.records_in(self.names.transactions, batch.size)
        if batch.dead:
            m.dead_lettered("decode", len(batch.dead))
        if self._batch_reviews:
            m.reviewed(self._batch_reviews)
        counts: dict[tuple[str, str], int] = {}
        for s in scores:
            k = (s.tier.value, s.model_version)
            counts[k] = counts.get(k, 0) + 1
        for (tier, version), n in counts.items():
            m.scores_out(tier, version, n)
        m.stage_duration("decode", stages[0])
        m.stage_duration("commit", stages[2])
        now = self.clock.wall()
        lat = [now - t.event_time_s for t in batch.txs if t.event_time_s is not None]
        if lat:
            m.event_to_score_latency(lat)


def _start_watchdog(timeout_s: float) -> None:
    """Hard-exit if graceful shutdown overruns its bound (an open transaction is
    aborted by the broker; nothing half-done becomes visible)."""
    import os

    def bite() -> None:
        log.error("shutdown_timeout", timeout_s=timeout_s)
        os._exit(EXIT_FATAL)

    timer = threading.Timer(timeout_s, bite)
    timer.daemon = True
    timer.start()
