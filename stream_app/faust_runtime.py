"""The faust runtime: the same ladder inside a faust-streaming agent.

For teams already on faust. `rung run --runtime faust` builds a `faust.App`
(aiokafka underneath) with one agent over the transactions topic:

    async for events in stream.take_events(batch.max_records, within=batch.linger_s):
        in the scoring thread (the event loop keeps fetching), `process_batch` —
        the same steps as the live worker and the replay:
          decode (bad bytes → dead-letter with source topic/partition/offset)
          score under the batch's Deadline (hand-over of the batch + batch.deadline_s)
          produce scores, review copies and dead letters on the event loop
          (`FaustSink`), wait for every ack
        release the batch's offsets to faust's commit loop

Delivery guarantee: **at-least-once**, with an idempotent producer
(`enable_idempotence=True`, `acks=all`). A batch's source offsets become
committable only after the broker has acknowledged every record produced for
it. Faust's own `take_events` acks a batch in a `finally` block, so on its own
a batch that failed or was cancelled half-way would still be committed; rung
holds one extra reference on each message (`Message.incref`) and drops it only
after the produce acks, so faust's ack alone never makes an unfinished batch
committable. A crash between produce and commit replays the batch: consumers
of the scores topic deduplicate by key (the transaction id). faust's
`processing_guarantee="exactly_once"` is not used (see docs/faust.md).

Errors: a scorer that breaks its contract, or a produce the broker does not
acknowledge, is fatal: the worker commits what was acknowledged and exits with
code 3 at once, leaving that batch uncommitted; the supervisor restarts it. SIGTERM/SIGINT stop it cleanly
(mode's worker handles the signals; the in-flight batch either finishes or
stays uncommitted).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faust
import structlog
from faust.transport.drivers.aiokafka import Producer as AIOKafkaProducer

from scorers.clock import Clock, SystemClock
from stream_app.config import Settings
from stream_app.kafka.errors import EXIT_FATAL, EXIT_OK, FatalError
from stream_app.kafka.records import OutRecord, SourceRecord
from stream_app.metrics import Metrics
from stream_app.pipeline import BatchContext, BatchScorer, Routing, WorkerMetrics, process_batch
from stream_app.tracing import BatchTracer

log = structlog.get_logger(__name__)

AGENT_NAME = "rung-score"


class IdempotentProducer(AIOKafkaProducer):
    """faust's aiokafka producer with idempotence on outside transactions.

    faust only turns on `enable_idempotence` in exactly-once mode; rung wants
    broker-side deduplication of producer retries in at-least-once mode too.
    """

    def _settings_extra(self) -> Any:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


def source_record(event: Any) -> SourceRecord:
    m = event.message
    h = m.headers  # aiokafka's (key, value) pairs; faust may hand a mapping
    return SourceRecord(m.topic, m.partition, m.offset, m.key, m.value, None,
                        list(h.items()) if isinstance(h, Mapping) else (h or None))


class FaustSink:
    """`stream_app.pipeline.BatchSink` for faust, called from the scoring thread: the
    produce runs on the event loop; returns once the broker acknowledged every record
    (at-least-once: the runtime releases the offsets afterwards)."""

    def __init__(self, producer: Any, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self.producer = producer
        self.loop = loop
        self.timeout_s = timeout_s

    def commit(self, records: Sequence[OutRecord],
               batch: Sequence[SourceRecord]) -> dict[str, float]:
        t0 = time.monotonic()
        fut = asyncio.run_coroutine_threadsafe(self._produce_all(records), self.loop)
        try:
            fut.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError as exc:
            fut.cancel()
            raise FatalError(f"produce not acknowledged within {self.timeout_s}s") from exc
        except concurrent.futures.CancelledError as exc:
            raise FatalError("produce cancelled") from exc
        return {"produce": time.monotonic() - t0}

    async def _produce_all(self, records: Sequence[OutRecord]) -> None:
        send = self.producer.send
        pending: list[Awaitable[Any]] = []
        try:
            for topic, key, value, headers in records:
                pending.append(await send(topic, key, value, None, None, headers))
            await asyncio.gather(*pending)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise FatalError(f"produce not acknowledged: {exc!r}") from exc


def app_settings(settings: Settings) -> dict[str, Any]:
    """The faust.App keyword arguments for these settings (pure, tested)."""
    k = settings.kafka
    session_s = k.session_timeout_s
    return {
        "id": k.group_id,
        "broker": [f"kafka://{s.strip()}" for s in k.bootstrap_servers.split(",") if s.strip()],
        "processing_guarantee": "at_least_once",
        "web_enabled": False,
        "topic_partitions": settings.topics.partitions,
        "topic_replication_factor": 1,
        "topic_allow_declare": True,  # faust's own internal topics, via the admin API
        "topic_disable_leader": True,  # no leader topic: rung needs no faust leader
        "consumer_auto_offset_reset": "earliest",
        # Bound what is fetched ahead of scoring per stream buffer.
        "stream_buffer_maxsize": max(settings.batch.max_records,
                                     min(settings.batch.max_in_flight_records, 8192)),
        "stream_wait_empty": True,
        "broker_commit_interval": 1.0,
        "broker_session_timeout": session_s,
        "broker_heartbeat_interval": max(0.5, session_s / 4),
        "broker_request_timeout": max(30.0, session_s + 5.0),
        "broker_max_poll_interval": k.max_poll_interval_s,
        "producer_acks": -1,
        "producer_linger": 0.002,
        "producer_max_batch_size": 256 * 1024,
        "producer_request_timeout": k.transaction_timeout_s,
        "table_standby_replicas": 0,
        # rung keeps no faust tables; faust still makes its data dir, by default in the
        # working directory (a `<group>-data` folder left in the user's checkout).
        "datadir": str(Path(tempfile.gettempdir()) / f"rung-faust-{k.group_id}-data"),
    }


class FaustRuntime:
    """One faust worker process running rung's ladder."""

    def __init__(self, settings: Settings, scorer: BatchScorer,
                 metrics: WorkerMetrics | None = None, clock: Clock | None = None,
                 shutdown_timeout_s: float = 10.0,
                 exit_process: Callable[[int], Any] = os._exit,
                 tracer: BatchTracer | None = None) -> None:
        if settings.kafka.delivery == "exactly_once":
            log.warning("faust_runtime_at_least_once",
                        detail="the faust runtime delivers at-least-once; "
                               "deduplicate scores by key downstream")
        self.settings = settings
        self.scorer = scorer
        self.metrics = metrics
        self.clock = clock or SystemClock()
        self.shutdown_timeout_s = shutdown_timeout_s
        self._exit_process = exit_process
        self.tracer = tracer  # OpenTelemetry through the headers (stream_app.tracing)
        self.names = settings.topics.names()
        self.fatal_reason: str | None = None
        self.batches_committed = 0
        self.records_committed = 0
        self.assigned_partitions = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rung-score")
        self.routing = Routing(self.names.scores, self.names.dead_letter, self.names.review)
        self.app = self._build_app()

    # ---- wiring ----------------------------------------------------------------
    def _build_app(self) -> faust.App:
        app = faust.App(**app_settings(self.settings))
        app.producer = IdempotentProducer(app.transport, loop=app.loop, beacon=app.beacon)
        topic = app.topic(self.names.transactions, key_type=bytes, value_type=bytes,
                          key_serializer="raw", value_serializer="raw")
        app.agent(topic, name=AGENT_NAME)(self._agent)

        async def _assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            self._set_assignment(app.consumer.assignment())

        async def _revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            revoked = set(args[0]) if args else set(kwargs.get("revoked", ()))
            self._set_assignment(set(app.consumer.assignment()) - revoked)

        app.on_partitions_assigned.connect(_assigned)
        app.on_partitions_revoked.connect(_revoked)

        return app

    def _set_assignment(self, tps: Any) -> None:
        mine = [tp for tp in tps if tp.topic == self.names.transactions]
        self.assigned_partitions = len(mine)
        if self.metrics is not None:
            self.metrics.set_assigned_partitions(len(mine))
        log.info("partitions_assigned", partitions=sorted(tp.partition for tp in mine))

    async def _agent(self, stream: Any) -> None:
        b = self.settings.batch
        async for events in stream.take_events(b.max_records, within=b.linger_s):
            try:
                await self._finish(asyncio.ensure_future(self.process(events)))
            except FatalError as exc:
                await self._fail(str(exc))
                return

    async def _finish(self, task: asyncio.Future[None]) -> None:
        """Await one batch; on shutdown (cancel) let it finish within a bound, so that
        its offsets go into faust's final commit instead of being replayed."""
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait({task}, timeout=self.shutdown_timeout_s)
            if task.done() and not task.cancelled() and task.exception() is None:
                log.info("batch_finished_on_shutdown")
            raise

    async def _fail(self, reason: str) -> None:
        """Commit what is acknowledged, then exit hard: the failed batch holds its
        references, so faust's graceful stop would wait for it forever."""
        self.fatal_reason = reason
        if self.metrics is not None:
            self.metrics.set_fatal(reason)
        log.error("worker_fatal", error=reason)
        try:
            await asyncio.wait_for(self.app.consumer.commit(), timeout=self.shutdown_timeout_s)
        except Exception as exc:  # the process is going down either way
            log.warning("final_commit_failed", error=repr(exc))
        sys.stdout.flush()
        sys.stderr.flush()
        self._exit_process(EXIT_FATAL)

    # ---- one batch ---------------------------------------------------------------
    async def process(self, events: Sequence[Any]) -> None:
        """`process_batch` in the scoring thread, then release the offsets."""
        received_s = self.clock.monotonic()  # faust hands over the batch; see pipeline
        for e in events:
            e.message.incref()  # hold the commit until the outputs are acknowledged
        loop = asyncio.get_running_loop()
        timeout_s = self.settings.kafka.transaction_timeout_s + self.shutdown_timeout_s
        ctx = BatchContext(scorer=self.scorer, routing=self.routing,
                           sink=FaustSink(self.app.producer, loop, timeout_s), clock=self.clock,
                           budget_s=self.settings.batch.deadline_s, metrics=self.metrics,
                           tracer=self.tracer)
        records = [source_record(e) for e in events]
        outcome = await loop.run_in_executor(self._executor, process_batch, records,
                                             received_s, ctx)
        for e in events:
            e.ack()  # drops rung's reference; take_events' own ack then commits
        self.batches_committed += 1
        self.records_committed += outcome.records

    # ---- lifecycle ---------------------------------------------------------------
    def run(self) -> int:
        """Run the faust worker until stopped; return the process exit code."""
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        worker = faust.Worker(self.app, loglevel=level, quiet=True, redirect_stdouts=False,
                              override_logging=False)
        log.info("worker_started", runtime="faust", topic=self.names.transactions,
                 delivery="at_least_once", group_id=self.settings.kafka.group_id)
        t0 = time.monotonic()
        try:
            worker.execute_from_commandline()
        except SystemExit:
            pass
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("worker_stopped", batches=self.batches_committed,
                 records=self.records_committed, seconds=round(time.monotonic() - t0, 1))
        return EXIT_FATAL if self.fatal_reason else EXIT_OK

    def readiness(self) -> tuple[bool, str]:
        if self.fatal_reason:
            return False, f"fatal: {self.fatal_reason}"
        if self.assigned_partitions == 0:
            return False, "no partitions assigned"
        return True, f"{self.assigned_partitions} partitions assigned"


def run_faust(settings: Settings, scorer: BatchScorer, metrics: Metrics,
              tracer: BatchTracer | None = None) -> int:
    """`rung run --runtime faust`: metrics endpoint, faust worker, exit code."""
    runtime = FaustRuntime(settings, scorer, metrics, tracer=tracer)
    server = None
    if settings.metrics.enabled:
        from stream_app.http import MetricsServer

        server = MetricsServer(metrics, host=settings.metrics.host, port=settings.metrics.port,
                               ready=runtime.readiness)
        server.start()
        log.info("metrics_listening", host=settings.metrics.host, port=server.port)
    try:
        return runtime.run()
    finally:
        close = getattr(scorer, "close", None)
        if close is not None:
            close()
        if server is not None:
            server.stop()
        if tracer is not None:
            tracer.shutdown()  # export what is queued
