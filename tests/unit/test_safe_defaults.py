"""Safe defaults: secrets stay out of logs and metrics, admin is off, metrics local.

The start-up line is captured from the real `run_worker` (stopped right after
it by a `build_scorer` that raises), rendered with rung's JSON log renderer,
and grepped for every secret; the metrics registry that run created is
scraped and grepped the same way. (Weights-only loading with checksum
verification is covered in tests/unit/scorers/test_torch_model.py and
tests/unit/scorers/lab/training/test_training_artifacts.py.)
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
import structlog
from prometheus_client import generate_latest

import stream_app.live.runner as runner
from stream_app.config import AdminSettings, MetricsSettings, Settings
from stream_app.http import MetricsServer
from stream_app.metrics import Metrics

SASL_SECRET = "kafka-s3cret-9f2"
REDIS_SECRET = "redis-s3cret-41a"
URL_SECRET = "url-s3cret-c07"
EXTRA_SECRET = "keypass-s3cret-77d"
SECRETS = (SASL_SECRET, REDIS_SECRET, URL_SECRET, EXTRA_SECRET)


class _Stop(Exception):
    pass


def _secret_settings(**sections: Any) -> Settings:
    return Settings.model_validate({
        "kafka": {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                  "sasl_username": "rung", "sasl_password": SASL_SECRET,
                  "extra": {"ssl.key.password": EXTRA_SECRET, "client.id": "rung-1"}},
        "redis": {"url": f"redis://default:{URL_SECRET}@redis:6379/0",
                  "password": REDIS_SECRET},
        **sections,
    })


def _assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run `run_worker` up to the ladder's construction; return what it logged and built."""
    seen: dict[str, Any] = {}

    class RecordingMetrics(Metrics):
        def __init__(self) -> None:
            super().__init__()
            seen["metrics"] = self

    def stop_here(settings: Settings, **kwargs: Any) -> Any:
        seen["build_kwargs"] = kwargs
        raise _Stop

    monkeypatch.setattr(runner, "Metrics", RecordingMetrics)
    monkeypatch.setattr(runner, "build_scorer", stop_here)
    # No broker here: the start-up credentials check is tested in test_kafka_auth.
    monkeypatch.setattr("stream_app.kafka.auth.check_credentials", lambda *a, **k: 1)
    with structlog.testing.capture_logs() as logs, pytest.raises(_Stop):
        runner.run_worker(_secret_settings())
    seen["logs"] = logs
    return seen


def test_start_up_line_masks_every_secret(started: dict[str, Any]) -> None:
    lines = [e for e in started["logs"] if e["event"] == "effective_configuration"]
    assert len(lines) == 1
    config = lines[0]["config"]
    rendered = structlog.processors.JSONRenderer()(None, "info", dict(lines[0]))
    assert isinstance(rendered, str)
    _assert_clean(rendered)
    _assert_clean(json.dumps(started["logs"], default=str))
    # ...while what is not secret is still there to read.
    assert config["kafka"]["sasl_username"] == "rung"
    assert config["kafka"]["extra"]["client.id"] == "rung-1"
    assert config["kafka"]["extra"]["ssl.key.password"] == "***"
    assert config["redis"]["url"] == "redis://***@redis:6379/0"


def test_metrics_of_a_started_worker_hold_no_secret(started: dict[str, Any]) -> None:
    metrics: Metrics = started["metrics"]
    metrics.records_in("rung.transactions", 3)
    metrics.scores_out("primary", "v1", 3)
    text = generate_latest(metrics.registry).decode()
    assert "rung_" in text
    _assert_clean(text)
    assert "password" not in text.lower()


def test_settings_reprs_hold_no_secret_str() -> None:
    # SecretStr fields never show. (`kafka.extra` values are plain strings: only
    # `redacted()` masks them, so log `redacted()`, never the Settings object.)
    s = _secret_settings()
    text = repr(s) + str(s) + json.dumps(s.model_dump(mode="json"))
    for secret in (SASL_SECRET, REDIS_SECRET, URL_SECRET):
        assert secret not in text


def test_fault_injection_is_off_by_default(started: dict[str, Any],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNG_ADMIN__FAULTS_ENABLED", raising=False)
    assert AdminSettings().faults_enabled is False
    assert Settings().admin.faults_enabled is False
    # the default run wraps nothing in fault switches
    assert started["build_kwargs"].get("primary_wrapper") is None


def test_admin_endpoint_refuses_without_a_switchboard() -> None:
    with MetricsServer(Metrics(), port=0) as server:
        for method in ("GET", "POST", "DELETE"):
            request = urllib.request.Request(f"{server.url}/admin/faults", method=method,
                                             data=b'{"primary": {"error": true}}'
                                             if method == "POST" else None)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=5)
            assert refused.value.code == 403


def test_metrics_bind_to_loopback_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNG_METRICS__HOST", raising=False)
    assert MetricsSettings().host == "127.0.0.1"
    assert Settings().metrics.host == "127.0.0.1"
    with MetricsServer(Metrics(), port=0) as server:
        assert server.url.startswith("http://127.0.0.1:")
    assert Settings(metrics=MetricsSettings(host="0.0.0.0")).metrics.host == "0.0.0.0"
