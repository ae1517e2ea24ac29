"""Wiring one worker process: settings → metrics, HTTP, ladder, worker loop.

With `admin.faults_enabled` (`RUNG_ADMIN__FAULTS_ENABLED=true` / `rung run
--faults`) the ladder's dependencies are wrapped in fault switches before it is
built (`stream_app.wiring.build_faulty_scorer`) and the HTTP
server gets the `/admin/faults` switchboard; otherwise nothing is wrapped and the
endpoint answers 403.

The ladder is built and warmed (`stream_app.wiring.build_scorer`) before the
worker subscribes, so a worker that has partitions is already warm. Its models'
in-memory weights are re-checked in the background (`rung_model_integrity_failures_total`).

A sticky CUDA error (the process's CUDA context is poisoned) is recorded by the
primary tier (`scorers.tiers.primary.fatal_error`); `FatalWatch` sees it, logs
`cuda_context_lost`, stops the worker (the batch in hand was answered by the
fallback and is committed) and the process exits with `EXIT_CUDA_CONTEXT_LOST` (4)
for its supervisor; if the graceful stop hangs, it exits hard after the worker's
shutdown timeout.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from scorers.ladder import Ladder
from scorers.tiers.primary import CUDA_CONTEXT_LOST, CudaContextLost, fatal_error
from stream_app.config import Settings
from stream_app.live.gil import set_switch_interval
from stream_app.live.heap import GcPauses, settle_heap
from stream_app.live.worker import EXIT_FATAL, Worker
from stream_app.metrics import Metrics
from stream_app.tracing import TracingUnavailable, build_tracer
from stream_app.wiring import build_faulty_scorer, build_scorer, stop_integrity

if TYPE_CHECKING:
    from stream_app.ops.faults_admin import Switchboard

log = structlog.get_logger(__name__)


def run_worker(settings: Settings, runtime: str = "confluent") -> int:
    log.info("effective_configuration", config=settings.redacted())
    set_switch_interval(settings.process.gil_switch_interval_s)  # stream_app/live/gil.py
    if settings.kafka.security_protocol != "PLAINTEXT":
        # librdkafka retries a refused login forever: check once, fail fast and clearly.
        from stream_app.kafka.auth import KafkaAuthError, check_credentials

        try:
            check_credentials(settings.kafka.client_config(), timeout_s=15.0)
        except (KafkaAuthError, TimeoutError) as exc:
            log.error("kafka_credentials_refused", error=str(exc))
            return EXIT_FATAL
    try:
        tracer = build_tracer(settings)  # None unless tracing.enabled (docs/tracing.md)
    except TracingUnavailable as exc:
        log.error("tracing_unavailable", error=str(exc))
        return EXIT_FATAL
    metrics = Metrics()
    scorer, switchboard = _build(settings, metrics)  # warmed: models, Redis, feature fetch
    # Everything built so far lives as long as the process: keep it out of the cyclic
    # collector's full passes, which otherwise walk it (torch, numpy, pydantic) mid-batch.
    settle_heap()
    GcPauses(metrics.gc_pause).start()
    for dependency, breaker in scorer.breakers.items():
        metrics.set_breaker_state(dependency, breaker.state.value)
    if runtime == "faust":
        from stream_app.faust_runtime import run_faust

        return run_faust(settings, scorer, metrics, tracer)
    if runtime != "confluent":
        raise SystemExit(f"unknown runtime {runtime!r}: use confluent or faust")
    worker = Worker(settings, scorer, metrics=metrics, tracer=tracer)
    server = None
    if settings.metrics.enabled:
        from stream_app.http import MetricsServer

        server = MetricsServer(metrics, host=settings.metrics.host, port=settings.metrics.port,
                               ready=lambda: _readiness(worker), faults=switchboard)
        server.start()
        log.info("metrics_listening", host=settings.metrics.host, port=server.port)
    worker.install_signal_handlers()
    watch = FatalWatch(scorer, worker.stop,
                       hard_exit_after_s=getattr(worker, "shutdown_timeout_s", 30.0)).start()
    try:
        code = worker.run()
        lost = watch.lost or fatal_error(scorer)
        if lost is not None:
            log.error(CUDA_CONTEXT_LOST, error=str(lost), exit_code=lost.exit_code)
            return lost.exit_code
        return code
    finally:
        watch.stop()
        stop_integrity(scorer)
        if switchboard is not None:
            switchboard.heal()  # release hung calls so the executor can close
        scorer.close()
        if server is not None:
            server.stop()
        if tracer is not None:
            tracer.shutdown()  # export what is queued


class FatalWatch:
    """Polls the ladder for a fatal fault (`fatal_error`) on a daemon thread; on one,
    logs `cuda_context_lost`, calls `stop` (the worker finishes its batch and commits)
    and, if the process is still alive `hard_exit_after_s` later, `os._exit`s with the
    fault's exit code."""

    def __init__(self, ladder: object, stop: Callable[[], None], *, every_s: float = 0.1,
                 hard_exit_after_s: float = 30.0,
                 hard_exit: Callable[[int], None] = os._exit) -> None:
        self._ladder, self._stop_worker = ladder, stop
        self.every_s, self.hard_exit_after_s = every_s, hard_exit_after_s
        self._hard_exit = hard_exit
        self._done = threading.Event()
        self.lost: CudaContextLost | None = None
        self._thread = threading.Thread(target=self._loop, name="rung-fatal-watch", daemon=True)

    def start(self) -> FatalWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()

    def _loop(self) -> None:
        while not self._done.wait(self.every_s):
            lost = fatal_error(self._ladder)
            if lost is None:
                continue
            self.lost = lost
            log.error(CUDA_CONTEXT_LOST, error=str(lost), exit_code=lost.exit_code,
                      action="stopping the worker for a restart")
            self._stop_worker()
            if not self._done.wait(self.hard_exit_after_s):
                log.error(CUDA_CONTEXT_LOST, error="graceful stop timed out",
                          exit_code=lost.exit_code)
                self._hard_exit(lost.exit_code)
            return


def _build(settings: Settings, metrics: Metrics) -> tuple[Ladder, Switchboard | None]:
    on_failure = metrics.model_integrity_failure
    if not settings.admin.faults_enabled:
        return build_scorer(settings, listener=metrics.ladder_listener,
                            on_integrity_failure=on_failure), None
    scorer, switchboard = build_faulty_scorer(settings, listener=metrics.ladder_listener,
                                              on_integrity_failure=on_failure)
    log.warning("fault_injection_enabled", endpoint="/admin/faults")
    return scorer, switchboard


def _readiness(worker: Worker) -> tuple[bool, str]:
    if worker.fatal_reason:
        return False, f"fatal: {worker.fatal_reason}"
    if worker.assigned_partitions == 0:
        return False, "no partitions assigned"
    return True, f"{worker.assigned_partitions} partitions assigned"
