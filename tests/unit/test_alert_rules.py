"""The Prometheus alert rules: syntax, their promtool unit tests, and that those tests bite."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PROM_DIR = Path(__file__).resolve().parents[2] / "docker" / "prometheus"
# The delayed-label alerts have their own file: evaluated every 30m instead of every 1m.
RULE_TESTS = ("alerts_test.yml", "alerts_quality_test.yml", "alerts_shadow_test.yml",
              "alerts_models_test.yml", "alerts_policy_test.yml")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is required in CI (Debian package `prometheus`)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


def run(*args: str, cwd: Path = PROM_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_rules_are_valid() -> None:
    res = run("check", "rules", "alerts.yml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_scrape_config_is_valid() -> None:
    res = run("check", "config", "prometheus.yml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_rule_unit_tests_pass() -> None:
    res = run("test", "rules", *RULE_TESTS)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_has_a_unit_test() -> None:
    rules = (PROM_DIR / "alerts.yml").read_text()
    tests = "".join((PROM_DIR / name).read_text() for name in RULE_TESTS)
    alerts = [line.split(":", 1)[1].strip() for line in rules.splitlines()
              if line.strip().startswith("- alert:")]  # fmt: skip
    assert len(alerts) == 12
    for name in alerts:
        assert f"alertname: {name}" in tests, name


# Each mutation changes one alert's threshold or logic; the unit tests must catch it.
MUTATIONS = [
    ("> 0.10", "> 0.20"),  # fallback share threshold
    ("> 0.01", "> 0.03"),  # dead-letter threshold
    ("for: 2m", "for: 4m"),  # breaker duration
    ('state=~"open|half_open"', 'state="open"'),  # half-open probes must not reset the timer
    ("> 100\n", "> 100000\n"),  # lag floor
    ("deriv(", "-deriv("),  # lag must grow, not shrink
    ("unless sum", "and sum"),  # no-scores logic
    ("< 0.99", "< 0.95"),  # primary share threshold
    ("< 0.8 * (", "< 0.5 * ("),  # live precision: relative drop
    (">= 20", ">= 2000"),  # live precision: minimum labelled alerts
    ("(rung_drift_psi) > 0.2", "(rung_drift_psi) > 0.4"),  # drift threshold
    ("for: 30m", "for: 10m"),  # drift duration
    ("increase(rung_model_refused_total[15m]) > 0", "increase(rung_model_refused_total[15m]) > 1"),
    ("unless rung_model_refused_total offset", "and rung_model_refused_total offset"),  # new series
    ("rung_canary_rollbacks_total offset 1h", "rung_canary_rollbacks_total offset 5m"),  # 1 hour
    ('refused"}[15m]', 'refused"}[1m]'),  # a refused policy reload alerts for 15 minutes
    ("(rung_policy_info == 1)) > 1", "(rung_policy_info == 1)) > 2"),  # two versions suffice
]


@pytest.mark.parametrize(("old", "new"), MUTATIONS, ids=[m[1].strip() for m in MUTATIONS])
def test_unit_tests_catch_a_broken_rule(tmp_path: Path, old: str, new: str) -> None:
    rules = (PROM_DIR / "alerts.yml").read_text()
    assert rules.count(old) == 1, old
    (tmp_path / "alerts.yml").write_text(rules.replace(old, new))
    for name in RULE_TESTS:
        shutil.copy(PROM_DIR / name, tmp_path / name)
    assert run("check", "rules", "alerts.yml", cwd=tmp_path).returncode == 0
    assert run("test", "rules", *RULE_TESTS, cwd=tmp_path).returncode != 0
