"""Wiring one worker process: settings → metrics, HTTP, ladder, worker loop.

With `admin.faults_enabled` (`RUNG_ADMIN__FAULTS_ENABLED=true` / `rung run
--faults`) the ladder's dependencies are wrapped in fault switches before it is
built (`stream_app.wiring.build_faulty_scorer`) and the HTTP
server gets the `/admin/faults` switchboard; otherwise nothing is wrapped and the
endpoint answers 403.

The ladder is built and warmed (`stream_app.wiring.build_scorer`) before the
worker subscribes, so a worker that has partitions is already warm.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

import structlog

from scorers.ladder import Ladder
from stream_app.config import Settings
from stream_app.live.worker import EXIT_FATAL, Worker
from stream_app.metrics import Metrics
from stream_app.wiring import build_faulty_scorer, build_scorer

if TYPE_CHECKING:
    from stream_app.ops.faults_admin import Switchboard

log = structlog.get_logger(__name__)


def run_worker(settings: Settings, runtime: str = "confluent") -> int:
    log.info("effective_configuration", config=settings.redacted())
    if settings.kafka.security_protocol != "PLAINTEXT":
        # librdkafka retries a refused login forever: check once, fail fast and clearly.
        from stream_app.kafka.auth import KafkaAuthError, check_credentials

        try:
            check_credentials(settings.kafka.client_config(), timeout_s=15.0)
        except (KafkaAuthError, TimeoutError) as exc:
            log.error("kafka_credentials_refused", error=str(exc))
            return EXIT_FATAL
    metrics = Metrics()
    scorer, switchboard = _build(settings, metrics)  # warmed: models, Redis, feature fetch
    # Everything built so far lives as long as the process: keep it out of the cyclic
    # collector's full passes, which otherwise walk it (torch, numpy, pydantic) mid-batch.
    gc.collect()
    gc.freeze()
    for dependency, breaker in scorer.breakers.items():
        metrics.set_breaker_state(dependency, breaker.state.value)
    if runtime == "faust":
        from stream_app.faust_runtime import run_faust

        return run_faust(settings, scorer, metrics)
    if runtime != "confluent":
        raise SystemExit(f"unknown runtime {runtime!r}: use confluent or faust")
    worker = Worker(settings, scorer, metrics=metrics)
    server = None
    if settings.metrics.enabled:
        from stream_app.http import MetricsServer

        server = MetricsServer(metrics, host=settings.metrics.host, port=settings.metrics.port,
                               ready=lambda: _readiness(worker), faults=switchboard)
        server.start()
        log.info("metrics_listening", host=settings.metrics.host, port=server.port)
    worker.install_signal_handlers()
    try:
        return worker.run()
    finally:
        if switchboard is not None:
            switchboard.heal()  # release hung calls so the executor can close
        scorer.close()
        if server is not None:
            server.stop()


def _build(settings: Settings, metrics: Metrics) -> tuple[Ladder, Switchboard | None]:
    if not settings.admin.faults_enabled:
        return build_scorer(settings, listener=metrics.ladder_listener), None
    scorer, switchboard = build_faulty_scorer(settings, listener=metrics.ladder_listener)
    log.warning("fault_injection_enabled", endpoint="/admin/faults")
    return scorer, switchboard


def _readiness(worker: Worker) -> tuple[bool, str]:
    if worker.fatal_reason:
        return False, f"fatal: {worker.fatal_reason}"
    if worker.assigned_partitions == 0:
        return False, "no partitions assigned"
    return True, f"{worker.assigned_partitions} partitions assigned"
