"""Wiring one worker process: settings → metrics, HTTP, ladder, worker loop."""

from __future__ import annotations

import structlog

from stream_app.config import Settings
from stream_app.metrics import Metrics
from stream_app.scoring import build_scorer
from stream_app.worker import Worker

log = structlog.get_logger(__name__)


def run_worker(settings: Settings, runtime: str = "confluent") -> int:
    log.info("effective_configuration", config=settings.redacted())
    metrics = Metrics()
    scorer = build_scorer(settings, listener=metrics.ladder_listener)
    for dependency, breaker in scorer.breakers.items():
        metrics.set_breaker_state(dependency, str(breaker.state))
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
                               ready=lambda: _readiness(worker))
        server.start()
        log.info("metrics_listening", host=settings.metrics.host, port=server.port)
    worker.install_signal_handlers()
    try:
        return worker.run()
    finally:
        scorer.close()
        if server is not None:
            server.stop()


def _readiness(worker: Worker) -> tuple[bool, str]:
    if worker.fatal_reason:
        return False, f"fatal: {worker.fatal_reason}"
    if worker.assigned_partitions == 0:
        return False, "no partitions assigned"
    return True, f"{worker.assigned_partitions} partitions assigned"
