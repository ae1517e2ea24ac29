"""No dangling queries: every metric the dashboard and the alert rules use is exposed.

The worker side is `stream_app.metrics` served by the real HTTP endpoint after
every metric has been exercised once; `tests/integration/test_prometheus_scrape.py`
checks the same names against a running worker.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_app.http import MetricsServer
from stream_app.metrics import Metrics, QualityMetrics
from stream_app.model_metrics import ModelMetrics
from stream_app.shadow_metrics import ShadowMetrics
from topics.schemas import Tier

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "rung.json"
ALERTS = ROOT / "docker" / "prometheus" / "alerts.yml"
# Labels Prometheus adds at scrape time or that histograms carry.
TARGET_LABELS = {"job", "instance", "le"}
NAME_RE = re.compile(r"\b(rung_[A-Za-z0-9_]+)\b(\{[^}]*\})?")
MATCHER_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
BY_RE = re.compile(r"\b(?:by|without|ignoring|on)\s*\(([^)]*)\)")


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", []) if t.get("expr")]
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict) and query.get("query"):
            exprs.append(query["query"])
    return exprs


def alert_exprs() -> list[str]:
    """The `expr: |` blocks of alerts.yml (no YAML library needed for this shape)."""
    exprs: list[str] = []
    lines = ALERTS.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() != "expr: |":
            continue
        indent = len(line) - len(line.lstrip())
        block = []
        for nxt in lines[i + 1 :]:
            if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                break
            block.append(nxt.strip())
        exprs.append(" ".join(block).strip())
    return exprs


def referenced(exprs: list[str]) -> dict[str, set[str]]:
    """Metric name -> label names used in its matchers."""
    names: dict[str, set[str]] = {}
    for expr in exprs:
        for name, matchers in NAME_RE.findall(expr):
            names.setdefault(name, set()).update(MATCHER_RE.findall(matchers or ""))
    return names


def exercise_all(m: Metrics) -> None:
    """Touch every metric once, the way a worker and the core do."""
    m.records_in("transactions", 10)
    m.scores_out(Tier.PRIMARY, "p1", 7)
    m.scores_out(Tier.FALLBACK, "fb1", 3)
    m.dead_lettered("decode")
    m.reviewed(1)
    m.stage_duration("produce", 0.003)
    m.event_to_score_latency([0.02, 0.04])
    m.set_consumer_lag("transactions", 0, 5)
    m.transaction_aborted("abortable")
    m.gc_pause(2, 0.012)
    m.set_assigned_partitions(1)
    m.set_fatal(None)
    m.set_breaker_state("primary_model", "closed")
    m.feature_records("transactions", "applied", 3)
    m.feature_catch_up("transactions", 2)
    m.set_feature_apply_lag("labels", 0, 4)
    m.feature_apply_failed("transactions", "timeout")
    lst = m.ladder_listener
    lst.on_batch_formed(10, "size")
    lst.on_tier_result(Tier.PRIMARY, "p1", 7)
    lst.on_degraded(Tier.PRIMARY, "timeout", 3)
    lst.on_breaker_transition("redis_features", "closed", "open")
    lst.on_deadline_miss("primary")
    lst.on_cache("hit", 2)
    lst.on_stage_duration("primary", 0.03)
    lst.on_internal_error("primary", RuntimeError("bug"))
    lst.on_cache_revalidation_dropped(1)
    lst.on_shed("late", 2)


def exercise_quality(q: QualityMetrics) -> None:
    """Touch every metric `rung monitor` adds (it serves them next to a `Metrics`)."""
    q.labelled(Tier.PRIMARY, "p1", "tp")
    q.monitored(Tier.PRIMARY, "p1", alert=True)
    q.records("scores", "joined")
    q.join_error()


def exercise_shadow(s: ShadowMetrics) -> None:
    """Touch every metric the shadow challenger and drift add (`stream_app.live.shadow`)."""
    s.compared("p1", "p2", 3)
    s.flipped("p1", "p2", "allow", "review", 1)
    s.set_correlation("p1", "p2", 0.9)
    s.dropped("queue_full", 1)
    s.set_psi("log_amount", "p1", 0.05)


def exercise_models(mm: ModelMetrics) -> None:
    """Touch every metric the model registry watch adds (`stream_app.live.model_watch`)."""
    mm.swapped("champion")
    mm.refused("p2", "integrity")
    mm.set_live("p1", "p2", 0.1)
    mm.rolled_back("p2", "error_rate")
    mm.version_rows("p2", answered=5, review=1, failed=1)
    mm.version_scores("p2", [np.array([0.1, 0.7])])
    mm.version_forward("p2", [0.004])


def exposed(url: str) -> dict[str, set[str]]:
    """Sample name -> label names, from a real scrape."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


@pytest.fixture(scope="module")
def worker_side() -> dict[str, set[str]]:
    m = Metrics()
    exercise_all(m)
    exercise_quality(QualityMetrics(m.registry))  # `rung monitor`'s own metrics
    exercise_shadow(ShadowMetrics(m.registry))  # the worker's shadow thread (live.shadow)
    exercise_models(ModelMetrics(m.registry))  # the model watch (live.model_watch)
    with MetricsServer(m, port=0) as srv:
        return exposed(srv.url)


def test_the_exercise_touches_every_registered_metric(worker_side: dict[str, set[str]]) -> None:
    families = {f.name for f in Metrics().registry.collect()}
    for family in families:
        assert any(name == family or name.startswith(family + "_") for name in worker_side), family


def test_queries_were_found() -> None:
    # guard against a parser that silently finds nothing
    assert len(dashboard_exprs()) >= 15
    assert len(alert_exprs()) == 12
    assert len(referenced(dashboard_exprs())) >= 12


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_queried_metric_and_label_is_exposed(
    source: str, worker_side: dict[str, set[str]]
) -> None:
    exprs = dashboard_exprs() if source == "dashboard" else alert_exprs()
    for name, labels in referenced(exprs).items():
        assert name in worker_side, f"{source} queries {name}, which no worker exposes"
        missing = labels - worker_side[name] - TARGET_LABELS
        assert not missing, f"{source} filters {name} on labels it lacks: {missing}"


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_grouping_labels_exist_on_a_queried_metric(
    source: str, worker_side: dict[str, set[str]]
) -> None:
    exprs = dashboard_exprs() if source == "dashboard" else alert_exprs()
    for expr in exprs:
        available = set(TARGET_LABELS)
        for name in referenced([expr]):
            available |= worker_side.get(name, set())
        for group in BY_RE.findall(expr):
            labels = {lbl.strip() for lbl in group.split(",") if lbl.strip()}
            assert labels <= available, f"{expr!r} groups by {labels - available}"


def test_a_dangling_name_would_be_caught(worker_side: dict[str, set[str]]) -> None:
    names = referenced(['sum(rate(rung_scores_totl{tier="cache"}[5m]))'])
    assert "rung_scores_totl" in names and "rung_scores_totl" not in worker_side


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel query as a recording rule (Grafana variables filled in)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(e for e in dashboard_exprs() if not e.startswith("label_values")):
        filled = expr.replace("$__rate_interval", "1m").replace("$job", ".*")
        lines += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(filled)}"]
    (tmp_path / "dash.yml").write_text("\n".join(lines) + "\n")
    res = subprocess.run([promtool, "check", "rules", str(tmp_path / "dash.yml")],
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
