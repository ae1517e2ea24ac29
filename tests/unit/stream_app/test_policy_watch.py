"""The policy watcher (stream_app/policy_watch.py): applied and refused reloads, their
metrics, the start-up load, and the settings that name the file (no thread sleeps:
`check` is one poll)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from scorers.policy import BUILTIN, DEFAULT_POLICY_PATH, PolicyError
from stream_app.config import Settings
from stream_app.metrics import Metrics, MetricsListener
from stream_app.policy_watch import PolicyWatcher, open_policy


def write(path: Path, data: object, mtime_ns: int) -> None:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    os.utime(path, ns=(mtime_ns, mtime_ns))


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_reloads_are_applied_or_refused_and_the_metrics_say_which(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    listener = MetricsListener(Metrics(registry))
    path = tmp_path / "policy.json"
    write(path, {"version": "v1"}, 1_000_000_000)
    holder, policy_file = open_policy(path, listener)
    assert holder.current.version == "v1" and policy_file is not None
    assert sample(registry, "rung_policy_info", version="v1") == 1
    watcher = PolicyWatcher(holder, policy_file, 1.0, listener)
    assert watcher.check() is False  # nothing changed
    write(path, "{broken", 2_000_000_000)
    assert watcher.check() is False
    assert holder.current.version == "v1"  # the old policy stays
    assert sample(registry, "rung_policy_reloads_total", outcome="refused") == 1
    write(path, {"version": "v2", "review_rules": [
        {"name": "big", "when": {"amount_at_least": 10000}}]}, 3_000_000_000)
    assert watcher.check() is True
    assert holder.current.version == "v2"
    assert sample(registry, "rung_policy_info", version="v2") == 1
    assert sample(registry, "rung_policy_info", version="v1") is None
    assert sample(registry, "rung_policy_reloads_total", outcome="applied") == 2


def test_no_path_is_the_builtin_policy_and_a_bad_file_stops_the_start(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    holder, policy_file = open_policy(None, MetricsListener(Metrics(registry)))
    assert holder.current is BUILTIN and policy_file is None
    assert sample(registry, "rung_policy_info", version="none") == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": "x", "thresholds": {"tiers": {"p": {"review": 5,
                                                                             "block": 6}}}}))
    with pytest.raises(PolicyError):
        open_policy(bad)


def test_watcher_thread_starts_and_stops(tmp_path: Path) -> None:
    holder, policy_file = open_policy(DEFAULT_POLICY_PATH)
    assert policy_file is not None
    watcher = PolicyWatcher(holder, policy_file, 0.01).start()
    watcher.stop(timeout_s=5.0)
    assert watcher._thread is not None and not watcher._thread.is_alive()


def test_settings_name_the_policy_file_and_the_explanations(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RUNG_POLICY__PATH", str(DEFAULT_POLICY_PATH))
    monkeypatch.setenv("RUNG_POLICY__POLL_INTERVAL_S", "0.25")
    monkeypatch.setenv("RUNG_EXPLAIN__TOP_K", "5")
    monkeypatch.setenv("RUNG_EXPLAIN__METHOD", "ig")
    s = Settings()
    assert s.policy.path == DEFAULT_POLICY_PATH and s.policy.poll_interval_s == 0.25
    assert s.explain.top_k == 5 and s.explain.method == "ig" and s.explain.enabled
    monkeypatch.setenv("RUNG_POLICY__PATH", str(tmp_path / "absent.json"))
    with pytest.raises(ValueError, match="policy file does not exist"):
        Settings()
    monkeypatch.delenv("RUNG_POLICY__PATH")
    monkeypatch.setenv("RUNG_EXPLAIN__TOP_K", "12")
    with pytest.raises(ValueError):
        Settings()
