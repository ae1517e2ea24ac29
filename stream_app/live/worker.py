"""The confluent-kafka worker: poll → micro-batch → score → one transaction, pipelined.

Loop, one batch at a time on the loop thread, its commit on the committer thread:

1. collect: `consume()` into a `scorers.batcher.MicroBatcher`, which closes a
   batch on size, on linger since its first record, or early enough for the
   earliest record to meet its deadline (consume can return early, so the loop
   keeps calling it, blocking only as long as the batcher allows);
2. `stream_app.pipeline.prepare_batch` (the same steps as the replay and the
   faust runtime): decode each record (bad bytes → dead-letter), mark the records
   past their event-time budget (`batch.event_budget_s`, off by default: the
   ladder answers those with its cheap tiers), score through the ladder under the
   batch's deadline (first record's receipt + `batch.deadline_s`), route;
3. wait for the previous batch's commit, then hand this one to the committer
   thread: `stream_app.pipeline.commit_batch` → `BatchCommitter` (through
   `KafkaSink`): in one Kafka transaction, every score (keyed by transaction id,
   headers naming tier and model version), every review copy, every dead letter,
   and the consumer's offsets; then the loop goes back to 1.
4. on the committer thread, once that transaction committed, the batch's events go
   to the feature store exactly once (`stream_app.features.events`: a watermark per
   partition stored with the aggregates; a missing range is read back from Kafka
   first). Commits run one at a time in batch order, so features are applied in
   offset order per partition. Partitions just assigned are caught up to the
   group's committed offsets in `on_assign`, before their first fetch (a
   predecessor killed after its commit); an idle worker does the same for a failed
   update. With Redis configured, a label feed thread (`stream_app.features.labels`)
   folds fraud labels into the terminal fraud counts the same way;
5. then the committed batch is offered to the shadow thread (`stream_app.live.shadow`:
   drift, and a challenger when configured), which never blocks the loop. Between
   batches the loop publishes a promoted model version (`stream_app.live.model_watch`).

Pipelined commits: batch N's produce/send-offsets/commit runs on the committer
thread while the loop consumes and scores N+1; N+1's transaction begins only
after N's commit returned (a transactional producer has one open transaction), so
at most one commit is in flight and the producer is used by one thread at a time.
N+1's records are scored against features that may not yet include N's events (a
batch later than before). If N aborts, the loop discards everything consumed since
N's first offsets (N+1's results, already scored, and the records buffered in the
batcher) and seeks every partition back to the first offset it discarded there,
on the loop thread, never while `consume()` runs; the records come again and are
scored again. Exactness first: nothing after an aborted batch is ever committed
before it. A fatal error on the committer thread stops the loop at its next look.

Backpressure: the batcher holds at most `max_in_flight_records`; the loop only
asks librdkafka for as many records as there is room for, and librdkafka's own
prefetch is capped (`queued.max.messages.kbytes`), so memory stays flat when
scoring or producing slows down. A full producer queue blocks in `produce`
while delivery reports drain.

Rebalancing (cooperative-sticky): `on_revoke` and `on_lost` first wait for the
commit in flight (so no transaction is open when the partitions go, and an abort
is known before anything is dropped), then drop the buffered records of revoked
partitions; their new owner reads them from the committed offsets. The records
kept keep their arrival time, so their deadline does not move.

Shutdown (SIGTERM/SIGINT): the signal handler only records the signal; the
loop (or the stall watchdog, within a second) logs `shutdown_requested` and
arms the shutdown watchdog. The batch being collected is closed and processed,
the last commit is waited for, and the consumer leaves the group; a watchdog
hard-exits after `shutdown_timeout_s` (an open transaction is then aborted by the
broker).
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import structlog
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from scorers.batcher import Batch, MicroBatcher
from scorers.clock import Clock, SystemClock
from scorers.listeners import LadderListener
from stream_app.config import Settings
from stream_app.features.applier import ApplierConfig, FeedMetrics, NoFeedMetrics, OffsetApplier
from stream_app.features.events import FEED as EVENTS_FEED
from stream_app.features.events import EventFeed, decode_event
from stream_app.features.labels import FEED as LABELS_FEED
from stream_app.features.labels import LabelFeed, decode_label_entry
from stream_app.features.reader import KafkaRangeReader
from stream_app.kafka.clients import consumer_config, producer_config
from stream_app.kafka.commit import BatchCommitter, KafkaSink
from stream_app.kafka.errors import EXIT_FATAL, EXIT_OK, FatalError, Policy, classify_consumer_error
from stream_app.kafka.records import SourceRecord, from_message
from stream_app.kafka.serde import build_format
from stream_app.live import model_watch, shadow_start, watchdogs
from stream_app.live.lag import report_consumer_lag
from stream_app.pipeline import (
    BatchContext,
    BatchOutcome,
    BatchScorer,
    PreparedBatch,
    Routing,
    WorkerMetrics,
    commit_batch,
    prepare_batch,
)
from stream_app.tracing import BatchTracer

log = structlog.get_logger(__name__)

FEATURE_APPLY = ApplierConfig()  # budgets of the feature feeds (settings to come)
IDLE_CATCH_UP_INTERVAL_S = 1.0  # how often an idle worker looks for unapplied ranges
TAKEOVER_CATCH_UP_ROUNDS = 4  # bounded reads per newly assigned partition before its fetch

__all__ = ["EXIT_FATAL", "EXIT_OK", "BatchScorer", "Worker", "WorkerMetrics"]


class Worker:
    """One scoring worker: a consumer in the group and a (transactional) producer."""

    def __init__(self, settings: Settings, scorer: BatchScorer, *,
                 metrics: WorkerMetrics | None = None, clock: Clock | None = None,
                 shutdown_timeout_s: float = 10.0, apply_features: bool = True,
                 tracer: BatchTracer | None = None) -> None:  # stream_app.tracing
        self.settings, self.tracer = settings, tracer
        self.scorer = scorer
        self.metrics = metrics
        self.listener = metrics.ladder_listener if metrics is not None else LadderListener()
        self.clock = clock or SystemClock()
        self.shutdown_timeout_s = shutdown_timeout_s
        self.names = settings.topics.names()
        self.eos = settings.kafka.delivery == "exactly_once"
        b = settings.batch
        self.batcher: MicroBatcher[Message] = MicroBatcher(
            b.max_records, b.linger_s, b.deadline_s, max_in_flight=1,
            max_pending=max(b.max_records, b.max_in_flight_records))
        self._stop = threading.Event()
        self._signalled: int | None = None  # set by the signal handler, and nothing else
        self._shutdown_lock = threading.Lock()
        self._shutdown_armed = False
        self._ctx: BatchContext | None = None
        self._assigned: set[tuple[str, int]] = set()
        self.fatal_reason: str | None = None
        self.batches_committed = 0
        self.records_committed = 0
        self._consumer: Consumer | None = None
        self._committer: BatchCommitter | None = None
        self._lag_reported_at = float("-inf")
        self.lag_interval_s = 1.0
        # A loop iteration is bounded by the transaction budget (retries, then abort);
        # one that takes much longer is stuck inside a client call: exit for a restart.
        self.stall_timeout_s = 2 * settings.kafka.transaction_timeout_s + 10.0
        self._beat_s = time.monotonic()
        self._looping = threading.Event()
        self.apply_features = apply_features  # False: someone else feeds the store
        self._events: EventFeed | None = None
        self._labels: LabelFeed | None = None
        self._readers: list[KafkaRangeReader] = []
        self._unchecked: set[tuple[str, int]] = set()  # assigned, watermark not yet checked
        self._idle_checked_at = float("-inf")
        # pipelined commits: at most one batch on the committer thread
        self._commit_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rung-commit")
        self._inflight: Future[BatchOutcome] | None = None
        self._inflight_records: Sequence[SourceRecord] = ()
        self._aborted: Sequence[SourceRecord] | None = None  # an aborted batch, not yet rewound
        self._sink: KafkaSink | None = None
        self._commit_started_s = float("inf")
        self._shadow: shadow_start.Shadow = shadow_start.NO_SHADOW
        self._models: model_watch.ModelWatch | model_watch.NoWatch = model_watch.NO_WATCH

    # ---- lifecycle ---------------------------------------------------------
    @property
    def assigned_partitions(self) -> int:
        return len(self._assigned)

    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: object) -> None:
            # a plain assignment only (it may interrupt a logging call); `_notice_signal` acts
            self._signalled = signum
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, handler)

    def _notice_signal(self) -> bool:
        """Act on a recorded signal once: log it, stop, arm the shutdown watchdog.
        Called by the loop and by the stall watchdog thread; True if stopping."""
        signum = self._signalled
        if signum is None:
            return self._stop.is_set()
        with self._shutdown_lock:
            if not self._shutdown_armed:
                self._shutdown_armed = True
                log.info("shutdown_requested", signal=signal.Signals(signum).name)
                self._stop.set()
                watchdogs.start_shutdown_watchdog(self.shutdown_timeout_s)
        return True

    def run(self) -> int:
        """Run until stopped; return the process exit code."""
        cconf = consumer_config(self.settings)
        if self.metrics is not None:
            cconf["stats_cb"] = self.metrics.update_from_librdkafka_stats
        on_abort = self.metrics.transaction_aborted if self.metrics is not None else None
        try:
            self._committer = BatchCommitter(
                producer_config(self.settings), exactly_once=self.eos,
                timeout_s=self.settings.kafka.transaction_timeout_s, on_abort=on_abort)
            self._consumer = Consumer(cconf)
            self._committer.init()
            names = self.names
            self._sink = KafkaSink(self._committer, self._consumer, rewind=False)
            self._ctx = BatchContext(
                scorer=self.scorer, sink=self._sink,
                routing=Routing(names.scores, names.dead_letter, names.review),
                clock=self.clock, budget_s=self.settings.batch.deadline_s, metrics=self.metrics,
                event_budget_s=self.settings.batch.event_budget_s, tracer=self.tracer,
                record_format=build_format(self.settings.format, names))
            self._start_feature_feeds()
            self._shadow = shadow_start.start(self.settings, self.scorer, self.metrics)
            self._models = model_watch.for_worker(self.scorer, self.metrics) or self._models
            self._consumer.subscribe([self.names.transactions], on_assign=self._on_assign,
                                     on_revoke=self._on_revoke, on_lost=self._on_lost)
            log.info("worker_started", topic=self.names.transactions, eos=self.eos,
                     transactional_id=self.settings.kafka.effective_transactional_id())
            self._looping.set()
            watchdogs.start_stall_watchdog(self)
            while not self._notice_signal():
                batch = self._collect()
                if batch is not None:
                    self._process(batch)
            self._drain()
            return EXIT_OK
        except (FatalError, KafkaException) as exc:
            self.fatal_reason = str(exc)
            if self.metrics is not None:
                self.metrics.set_fatal(str(exc))
            log.error("worker_fatal", error=str(exc))
            return EXIT_FATAL
        finally:
            self._looping.clear()
            self._close()

    def _start_feature_feeds(self) -> None:
        """The transactions feed (applied by this loop) and the label feed thread, when
        a Redis feature store is configured."""
        from scorers.feature_store import RedisFeatureStore
        from stream_app.wiring import redis_client

        if not self.apply_features:
            return
        client = redis_client(self.settings, socket_timeout_s=FEATURE_APPLY.timeout_s)
        if client is None:
            return
        store = RedisFeatureStore(client, quick_ack=self.settings.redis.tcp_quick_ack)
        fm = self.metrics if isinstance(self.metrics, FeedMetrics) else NoFeedMetrics()
        conf = self.settings.kafka.client_config()
        self._readers = [KafkaRangeReader(conf), KafkaRangeReader(conf)]
        self._events = EventFeed(OffsetApplier(
            store, self._readers[0], decode_event, feed=EVENTS_FEED, config=FEATURE_APPLY,
            metrics=fm))
        labels_conf = consumer_config(self.settings, f"{self.settings.kafka.group_id}-labels")
        self._labels = LabelFeed(labels_conf, self.names.labels, OffsetApplier(
            store, self._readers[1], decode_label_entry, feed=LABELS_FEED, config=FEATURE_APPLY,
            metrics=fm), busy_share=self.settings.process.label_feed_busy_share)
        self._labels.start()

    def _drain(self) -> None:
        """Shutdown: process what is buffered, then wait for the last commit. After an
        abort the rest is dropped: it comes again for the partitions' next owner."""
        batches = self.batcher.flush(self.clock.monotonic())
        for i, batch in enumerate(batches):
            if not self._process(batch):
                for rest in batches[i + 1:]:
                    self.batcher.abandon(rest)
                break
        self._settle(block=True)
        if self._aborted is not None:
            self._rewind()

    def _close(self) -> None:
        self._wait_for_commit_on_close()
        self._shadow.stop()  # stream_app.live.shadow: flush the shadow topic
        if self._labels is not None:
            self._labels.stop()
            self._labels = None
        for reader in self._readers:
            try:
                reader.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("feature_reader_close_failed", error=str(exc))
        self._readers = []
        if self._committer is not None:
            try:
                self._committer.close()
            except FatalError as exc:
                log.warning("committer_close_failed", error=str(exc))
            self._committer = None
        if self._consumer is not None:
            try:
                self._consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("consumer_close_failed", error=str(exc))
            self._consumer = None
        log.info("worker_stopped", batches=self.batches_committed, records=self.records_committed)

    def _wait_for_commit_on_close(self) -> None:
        """Never close the producer or the feature readers under the committer thread."""
        fut = self._inflight
        if fut is not None:
            try:
                fut.result(timeout=self.settings.kafka.transaction_timeout_s + 5.0)
            except Exception as exc:  # noqa: BLE001 - closing anyway; the fatal path logged it
                log.warning("commit_in_flight_failed_on_close", error=repr(exc))
            self._inflight = None
        self._commit_pool.shutdown(wait=fut is None or fut.done())

    # ---- rebalancing ---------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.update((tp.topic, tp.partition) for tp in partitions)
        self._unchecked.update((tp.topic, tp.partition) for tp in partitions)
        self._report_assignment()
        log.info("partitions_assigned", partitions=[tp.partition for tp in partitions])
        self._catch_up(takeover=True)  # before any record of them is fetched

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._settle(block=True)  # the commit in flight decides what the new owner reads
        self._drop(partitions)
        log.info("partitions_revoked", partitions=[tp.partition for tp in partitions])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._settle(block=True)  # it will most likely abort: known before anything goes
        self._drop(partitions)
        log.warning("partitions_lost", partitions=[tp.partition for tp in partitions])

    def _drop(self, partitions: list[TopicPartition]) -> None:
        """Forget buffered records of partitions this worker no longer owns."""
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned -= gone
        self._unchecked -= gone
        if self._events is not None:
            self._events.applier.forget(gone)
        self.batcher.retain(lambda msg: (msg.topic(), msg.partition()) not in gone)
        if self._committer is not None and self._inflight is None:
            self._committer.abort("revoked")  # never open here; kept as a guard
        if self.metrics is not None:
            self.metrics.drop_consumer_lag(gone)
        self._report_assignment()

    def _report_assignment(self) -> None:
        if self.metrics is not None:
            self.metrics.set_assigned_partitions(len(self._assigned))

    # ---- collect -------------------------------------------------------------
    def _collect(self) -> Batch[Message] | None:
        """Poll until the batcher closes a batch, or stop is requested."""
        assert self._consumer is not None
        b = self.settings.batch
        batcher = self.batcher
        while not self._notice_signal():
            self._beat_s = time.monotonic()
            self._models.between_batches()  # no batch in scoring: swaps, canary (model_watch)
            self._settle(block=False)
            if self._aborted is not None:
                self._rewind()
            now = self.clock.monotonic()
            if now - self._lag_reported_at >= self.lag_interval_s:
                self._report_lag(now)
            batch = batcher.poll_ready(now)
            if batch is not None:
                self.listener.on_batch_formed(len(batch), batch.reason)
                return batch
            wait = batcher.time_until_ready(now)
            timeout = b.poll_timeout_s if wait is None else min(wait, b.poll_timeout_s)
            room = min(b.max_records, batcher.max_pending) - batcher.pending
            if room <= 0:
                return None  # cannot happen with one batch in flight; stay safe
            if batcher.pending == 0:
                # consume() waits its whole timeout unless `room` records arrive, so an
                # empty batch waits for its first record with poll(), which returns at once.
                first = self._consumer.poll(b.poll_timeout_s)
                msgs = [first] if first is not None else []
                if not msgs:
                    self._catch_up()
            else:
                msgs = self._consumer.consume(num_messages=room, timeout=timeout)
            now = self.clock.monotonic()
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if classify_consumer_error(err) is Policy.FATAL:
                        raise FatalError(f"consumer error: {err}")
                    log.warning("consumer_error", error=str(err))
                    continue
                batcher.add(msg, now)
        return None

    def _catch_up(self, *, takeover: bool = False) -> None:
        """Apply what is missing below the committed offsets of partitions just assigned
        or known to lag. Idle (nothing buffered, no commit in flight): at most every few
        seconds. `takeover` (from `_on_assign`, before the new partitions' first fetch):
        after the commit in flight, with a few bounded reads per partition, so the new
        owner scores on the previous owner's complete features and never reads that tail
        from Kafka while it fetches features for a batch (`features.events`)."""
        events = self._events
        now = self.clock.monotonic()
        if events is None or self._consumer is None or self.batcher.pending and not takeover:
            return
        if takeover:
            self._settle(block=True)
        elif self._inflight is not None or now - self._idle_checked_at < IDLE_CATCH_UP_INTERVAL_S:
            return
        self._idle_checked_at = now
        todo = [tp for tp in sorted(self._assigned)
                if tp in self._unchecked or (events.applier.lag(*tp) or 0) > 0]
        if events.catch_up_committed(self._consumer, todo,
                                     rounds=TAKEOVER_CATCH_UP_ROUNDS if takeover else 1):
            self._unchecked -= set(todo)

    def _report_lag(self, now: float) -> None:
        self._lag_reported_at = now
        if self.metrics is not None and self._consumer is not None:
            report_consumer_lag(self._consumer, self._assigned, self.metrics)

    # ---- process -------------------------------------------------------------
    def _process(self, batch: Batch[Message]) -> bool:
        """Prepare a batch, wait for the previous commit, hand this one to the committer
        thread. False: the previous batch aborted and this one was discarded with it."""
        assert self._ctx is not None
        try:
            prepared = prepare_batch([from_message(m) for m in batch.items],
                                     batch.first_added_at_s, self._ctx)
        finally:
            self.batcher.abandon(batch)  # counts are checked by prepare_batch
        self.batcher.record_inference(prepared.score_s)
        self._settle(block=True)
        if self._aborted is not None:
            self._rewind(prepared.records)
            return False
        if self._sink is not None:
            self._sink.pin_group_metadata()
        self._inflight_records = prepared.records
        self._commit_started_s = time.monotonic()
        self._inflight = self._commit_pool.submit(self._commit, prepared)
        return True

    def _commit(self, prepared: PreparedBatch) -> BatchOutcome:
        """On the committer thread: claim new partitions' watermarks, commit, apply."""
        assert self._ctx is not None
        if self._events is not None:  # `EventFeed.claim_batch`: before the first commit
            self._events.claim_batch(prepared.decoded)
        outcome = commit_batch(prepared, self._ctx)
        if outcome.committed:
            self.batches_committed += 1
            self.records_committed += outcome.records
            if self._events is not None and outcome.decoded is not None:
                t0 = self.clock.monotonic()
                self._events.apply_batch(outcome.decoded)
                self.listener.on_stage_duration("feature_apply", self.clock.monotonic() - t0)
            self._shadow.offer(outcome)  # after commit, never blocks (live.shadow)
        return outcome

    def _settle(self, *, block: bool) -> None:
        """Take the result of the commit in flight once it is done (or wait for it): an
        abort is remembered for `_rewind`; a fatal error is raised here."""
        fut = self._inflight
        if fut is None or (not block and not fut.done()):
            return
        self._inflight = None
        records, self._inflight_records = self._inflight_records, ()
        if not fut.result().committed:
            self._aborted = records

    def _rewind(self, scored: Sequence[SourceRecord] = ()) -> None:
        """After an abort: discard the aborted batch, `scored` (the next one, already
        scored) and every buffered record, and seek each partition still assigned back
        to the first offset discarded there."""
        aborted, self._aborted = self._aborted or (), None
        first: dict[tuple[str, int], int] = {}

        def note(topic: str, partition: int, offset: int) -> None:
            key = (topic, partition)
            if offset < first.get(key, offset + 1):
                first[key] = offset

        for r in itertools.chain(aborted, scored):
            note(r.topic, r.partition, r.offset)

        def discard(msg: Message) -> bool:
            note(msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
            return False

        buffered = self.batcher.retain(discard)
        if self._consumer is not None:
            for (topic, partition), offset in sorted(first.items()):
                if (topic, partition) not in self._assigned:
                    continue  # gone: its new owner reads from the committed offset
                try:
                    self._consumer.seek(TopicPartition(topic, partition, offset))
                except KafkaException as exc:
                    log.info("rewind_skipped", partition=partition, error=str(exc))
        log.info("batch_rewound", aborted=len(aborted), scored=len(scored), buffered=buffered,
                 partitions=len(first))
