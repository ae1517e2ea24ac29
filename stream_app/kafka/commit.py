"""One micro-batch, one Kafka transaction — or at-least-once, if configured.

`BatchCommitter` owns the producer. `commit(records, offsets, consumer)`
produces every output record of a batch and commits the consumer's offsets
with it:

- exactly-once: begin → produce → send offsets (with the consumer's group
  metadata, so a zombie from an older generation is fenced) → commit;
- at-least-once: produce → flush → synchronous offset commit.

Errors follow `stream_app.kafka.errors`: a retriable error is retried within the
transaction budget; an abortable one aborts and rewinds the consumer to the
batch's first offsets (the caller gets False and the records come again); a
fatal one raises `FatalError`. The abort metric gets a bounded reason
(`errors.abort_reason`: the librdkafka error code name, or `revoked` / `closing`).

`KafkaSink` adapts it to `stream_app.pipeline.BatchSink`: the live worker and the
replay hand it to `process_batch` / `commit_batch`. The live worker commits on a
second thread while its loop consumes the next batch, so it builds the sink with
`rewind=False`: a seek from that thread would race the loop's `consume()`, and the
loop has more to discard than the aborted batch (the next one, already scored, and
what is buffered); it rewinds itself (`stream_app.live.worker`, "Pipelined
commits"), and pins the consumer's group metadata on the loop thread before each
commit (`pin_group_metadata`), so the committer thread never calls the consumer
(exactly-once). The producer is only ever used by one thread at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from stream_app.kafka.errors import (
    FatalError,
    Policy,
    abort_reason,
    classify_transaction_error,
    kafka_error,
)
from stream_app.kafka.records import OutRecord, SourceRecord, offset_bounds

log = structlog.get_logger(__name__)


ABORT_RETRY_PAUSE_S = 0.5  # after an abort that could not reach the broker
MIN_CALL_TIMEOUT_S = 1.0  # the least a transactional call is given, even late in the budget


def _no_transaction(exc: KafkaException) -> bool:
    """The producer had no transaction to abort (its state allows none): nothing to do."""
    err = kafka_error(exc)
    return err is not None and err.code() == KafkaError._STATE


class BatchCommitter:
    def __init__(self, producer_conf: dict[str, Any], *, exactly_once: bool,
                 timeout_s: float, on_abort: Callable[[str], None] | None = None) -> None:
        self.exactly_once = exactly_once
        self.timeout_s = timeout_s
        self._on_abort = on_abort
        # An abort still failing this long after its first try is fatal: the worker exits
        # and its successor's init_transactions fences and aborts (see `abort`).
        self.abort_give_up_s = 2 * timeout_s + 10.0
        self._abort_failing_since: float | None = None
        self._producer: Producer | None = Producer(producer_conf)
        self.in_transaction = False
        self.last_produce_s = 0.0  # time spent handing the last batch's records to librdkafka
        self.last_commit_s = 0.0  # time from the end of produce to the committed offsets

    def init(self) -> None:
        if self.exactly_once:
            try:
                self.producer.init_transactions(self.timeout_s)
            except KafkaException as exc:
                raise FatalError(f"init_transactions failed: {exc}") from exc

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            raise RuntimeError("committer is closed")
        return self._producer

    def commit(self, records: Sequence[OutRecord], offsets: list[TopicPartition],
               rewind_to: list[TopicPartition], consumer: Consumer,
               group_metadata: Any = None) -> bool:
        """Produce `records` and commit `offsets` atomically; False if aborted and rewound.
        `group_metadata`: the consumer's, taken by the caller (default: taken here)."""
        t0 = time.monotonic()
        if not self.exactly_once:
            self._produce(records)
            t1 = time.monotonic()
            left = self.producer.flush(self.timeout_s)
            if left:
                raise FatalError(f"{left} records not delivered; offsets not committed")
            consumer.commit(offsets=offsets, asynchronous=False)
            self.last_produce_s, self.last_commit_s = t1 - t0, time.monotonic() - t1
            return True
        budget_end = t0 + self.timeout_s
        if self.in_transaction:  # an earlier abort did not complete: finish it first
            self.abort("incomplete_abort")
            if self.in_transaction:
                return False
        try:
            self.producer.begin_transaction()
            self.in_transaction = True
            self._produce(records)
            t1 = time.monotonic()
            metadata = (group_metadata if group_metadata is not None
                        else consumer.consumer_group_metadata())
            self._retrying(lambda t: self.producer.send_offsets_to_transaction(
                offsets, metadata, t), budget_end)
            self._retrying(lambda t: self.producer.commit_transaction(t), budget_end)
            self.in_transaction = False
            self.last_produce_s, self.last_commit_s = t1 - t0, time.monotonic() - t1
            return True
        except KafkaException as exc:
            if classify_transaction_error(exc) is Policy.FATAL:
                raise FatalError(f"transaction failed fatally: {exc}") from exc
            # Also when begin_transaction itself failed: the producer may hold an
            # abortable error that only abort_transaction clears.
            self.abort(abort_reason(exc), detail=str(exc), force=True)
            for tp in rewind_to:
                try:
                    consumer.seek(tp)
                except KafkaException as seek_exc:  # partition no longer assigned
                    log.info("rewind_skipped", partition=tp.partition, error=str(seek_exc))
            return False

    def abort(self, reason: str, *, detail: str = "", force: bool = False) -> None:
        """Abort the open transaction, if any (also used on revoke and shutdown); `force`:
        call the producer's abort even if no transaction was begun here (a failed
        `begin_transaction` can leave an abortable error behind).

        `reason` is a metric label and must come from a small set (an error code name,
        `revoked`, `closing`); the error text goes in `detail`, which is only logged.
        An abort that fails without being fatal (the broker unreachable) leaves
        `in_transaction` set: the next commit aborts again before it begins, after a
        short pause, so a lost link never becomes a hot loop of failed transactions.
        One still failing `abort_give_up_s` after its first try raises `FatalError`: the
        loop comes round between the tries, so the stall watchdog would never see it
        (seen once after a broker restart: every abort timed out for 3 minutes)."""
        if not (self.exactly_once and (self.in_transaction or force)):
            return
        log.warning("transaction_aborted", reason=reason, detail=detail)
        if self._on_abort is not None:
            self._on_abort(reason)
        started = time.monotonic()
        since = self._abort_failing_since
        if since is not None and started - since > self.abort_give_up_s:  # gave up already
            raise FatalError(f"abort not completed after {started - since:.0f} s")
        try:
            self.producer.abort_transaction(self.timeout_s)
        except KafkaException as exc:
            if classify_transaction_error(exc) is Policy.FATAL:
                raise FatalError(f"abort failed fatally: {exc}") from exc
            if self.in_transaction or not _no_transaction(exc):
                self.in_transaction = True
                if self._abort_failing_since is None:
                    self._abort_failing_since = started
                failing_s = time.monotonic() - self._abort_failing_since
                log.warning("transaction_abort_failed", error=str(exc),
                            failing_s=round(failing_s, 1))
                if failing_s > self.abort_give_up_s:
                    raise FatalError(
                        f"abort not completed after {failing_s:.0f} s: {exc}") from exc
                time.sleep(ABORT_RETRY_PAUSE_S)
                return
        self.in_transaction = False
        self._abort_failing_since = None

    def _produce(self, records: Sequence[OutRecord]) -> None:
        produce = self.producer.produce
        for topic, key, value, headers in records:
            while True:
                try:
                    # the stub wants list[tuple[str, str | bytes | None]]; lists are invariant
                    produce(topic, value=value, key=key, headers=headers)  # type: ignore[arg-type]
                    break
                except BufferError:
                    # Local queue full: serve delivery reports until there is room.
                    self.producer.poll(0.05)

    def _retrying(self, call: Callable[[float], None], budget_end: float) -> None:
        """Call with what is left of the batch's budget (at least `MIN_CALL_TIMEOUT_S`);
        retry a retriable error only while budget is left *after* it. A retry past the
        budget is not short: a resumed `send_offsets_to_transaction` waits for its request
        in flight whatever timeout it is given (librdkafka enforces that call's timeout in
        the request only); one given 1 s returned after 15.9 s with the coordinator down,
        and with the abort after it a batch took 3 × the transaction timeout, past the
        stall watchdog (docs/reliability.md, "Broker restart")."""
        while True:
            try:
                call(max(MIN_CALL_TIMEOUT_S, budget_end - time.monotonic()))
                return
            except KafkaException as exc:
                if (classify_transaction_error(exc) is not Policy.RETRY
                        or time.monotonic() >= budget_end):
                    raise
                log.warning("transaction_retry", error=str(exc))

    def close(self) -> None:
        if self._producer is None:
            return
        try:
            self.abort("closing")  # raises FatalError on a fenced producer
            self._producer.flush(5.0)
        finally:  # the librdkafka handle goes with the object, fenced or not
            self._producer = None


class KafkaSink:
    """`stream_app.pipeline.BatchSink` over a `BatchCommitter` and its consumer.

    `metadata(partition)`, if given, is stored with each committed offset (the replay
    keeps its range there). `rewind=False`: an aborted batch is not rewound here; the
    caller does it (see the module docstring)."""

    def __init__(self, committer: BatchCommitter, consumer: Consumer,
                 metadata: Callable[[int], str] | None = None, *, rewind: bool = True) -> None:
        self.committer = committer
        self.consumer = consumer
        self.metadata = metadata
        self.rewind = rewind
        self._group_metadata: Any = None

    def pin_group_metadata(self) -> None:
        """Take the consumer's group metadata now, on the consuming thread, for the next
        commit (which may run on another thread: it then never touches the consumer)."""
        self._group_metadata = self.consumer.consumer_group_metadata()

    def commit(self, records: Sequence[OutRecord],
               batch: Sequence[SourceRecord]) -> dict[str, float] | None:
        rewind_to, offsets = offset_bounds(batch)
        meta = self.metadata
        if meta is not None:
            offsets = [TopicPartition(tp.topic, tp.partition, tp.offset, meta(tp.partition))
                       for tp in offsets]
        c = self.committer
        group_metadata, self._group_metadata = self._group_metadata, None
        rewind = rewind_to if self.rewind else []
        ok = (c.commit(records, offsets, rewind, self.consumer) if group_metadata is None
              else c.commit(records, offsets, rewind, self.consumer, group_metadata))
        if not ok:
            return None
        return {"produce": c.last_produce_s, "commit": c.last_commit_s}
