"""The pure pieces of the benchmark harness: percentiles, goals, machine, JSON.

No Kafka, no timing here, so `tests/unit/test_benchmarks_smoke.py` can check
them. A result file is one JSON object:
`{"schema": 1, "kind", "started_at", "machine", "settings", "results", "goals"}`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], not {q}")
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def latency_summary_ms(values_ms: Sequence[float]) -> dict[str, float | int]:
    """p50 / p99 / p99.9 / max of latencies in milliseconds, and how many."""
    return {"n": len(values_ms), "p50_ms": percentile(values_ms, 50),
            "p99_ms": percentile(values_ms, 99), "p999_ms": percentile(values_ms, 99.9),
            "max_ms": max(values_ms) if values_ms else math.nan}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


@dataclass(frozen=True, slots=True)
class Goal:
    name: str
    measured: float | None  # None: not measured in this run
    limit: float
    higher_is_better: bool
    withheld: str | None = None  # why this run cannot judge it (met is then None)

    @property
    def met(self) -> bool | None:
        if self.withheld or self.measured is None or math.isnan(self.measured):
            return None
        return self.measured >= self.limit if self.higher_is_better else self.measured <= self.limit

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


def _get(results: Mapping[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def throughput(results: Mapping[str, Any], scenario: str) -> float | None:
    value = _get(results, "throughput", scenario, "records_per_s")
    return float(value) if isinstance(value, (int, float)) else None


HEALTHY_RATIO_GOAL = 0.8  # healthy / passthrough, on both sets
PRIMARY_SHARE_GOAL = 0.999  # healthy at realistic cardinality: the primary answers
HIGH_LOAD_P99_MS = 150.0  # read-back p99 at 90% of the healthy maximum
REPLAY_RATIO_GOAL = 0.8  # replay / its own passthrough
OVERLOAD_SLOPE_SHARE = 0.1  # lag growth over the overload's 2nd half / the excess offered
OVERLOAD_RECOVERY_S = 30.0  # after the overload: lag under one second of input within this
UNSETTLED_BROKER = ("the broker's warm-up did not settle (broker_warm_up): its passthrough "
                    "ceiling is low and scattered, so a ratio over it is flattered")


def evaluate_goals(results: Mapping[str, Any], deadline_s: float) -> list[Goal]:
    """The issue's goals, from a `results` mapping (see `run.py` for its shape).

    Latency goals use the read-back latency (`event_to_visible`: input CreateTime to
    the committed score's visibility on a read_committed consumer)."""
    passthrough = throughput(results, "passthrough")
    healthy = throughput(results, "healthy")
    broken = throughput(results, "breaker_open")
    real = _get(results, "realistic")
    real = real if isinstance(real, Mapping) else {}
    real_ratio = ratio(throughput(real, "healthy"), throughput(real, "passthrough"))
    real_share = _get(real, "throughput", "healthy", "primary_share")
    hang_p99 = _get(results, "throughput", "hang", "ladder_latency", "p99_ms")
    half_p99 = _get(results, "latency", "load_50", "event_to_visible", "p99_ms")
    high_p99 = _get(results, "latency", "load_90", "event_to_visible", "p99_ms")
    replay = _get(results, "replay", "ladder_share_of_ceiling")
    rss_growth = _get(results, "soak", "rss_growth_ratio")
    slope = _get(results, "overload", "phases", "over", "lag_slope_second_half_per_s")
    excess = _get(results, "overload", "phases", "over", "offered_excess_per_s")
    recovered = _get(results, "overload", "recovered_after_s")
    deadline_ms = deadline_s * 1000.0
    # a broker whose own warm-up never settled gives a low, scattered passthrough: the
    # ratios over it flatter rung, so this run does not judge them (still reported)
    cold = (UNSETTLED_BROKER if _get(results, "broker_warm_up", "settled") is False
            else None)
    return [
        Goal("healthy / passthrough", ratio(healthy, passthrough), HEALTHY_RATIO_GOAL, True,
             cold),
        Goal("realistic: healthy / passthrough", real_ratio, HEALTHY_RATIO_GOAL, True, cold),
        Goal("realistic: healthy primary share", real_share, PRIMARY_SHARE_GOAL, True),
        Goal("breaker open / healthy", ratio(broken, healthy), 1.0, True),
        Goal("hanging primary: ladder p99 ms", hang_p99, 1.5 * deadline_ms, False),
        Goal("50% load: read-back p99 ms", half_p99, deadline_ms + 20.0, False),
        Goal("90% load: read-back p99 ms", high_p99, HIGH_LOAD_P99_MS, False),
        Goal("replay / its passthrough", replay, REPLAY_RATIO_GOAL, True, cold),
        Goal("soak: RSS growth (end/start - 1)", rss_growth, 0.10, False),
        Goal("overload 120%: lag slope / offered excess (2nd half)",
             ratio(slope, excess), OVERLOAD_SLOPE_SHARE, False),
        Goal("overload: seconds to near-zero lag after it", recovered,
             OVERLOAD_RECOVERY_S, False),
    ]


def _version(module: str, attr: str = "__version__") -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - a missing optional package is just "None"
        return None
    value = getattr(mod, attr, None)
    return str(value) if value is not None else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_model": cpu_model(), "cores": os.cpu_count(),
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": _version("torch"), "numpy": _version("numpy"), "orjson": _version("orjson"),
    }
    try:
        import confluent_kafka

        info["confluent_kafka"] = confluent_kafka.version()[0]
        info["librdkafka"] = confluent_kafka.libversion()[0]
    except ImportError:
        info["confluent_kafka"] = info["librdkafka"] = None
    return info


def result_document(kind: str, settings: Mapping[str, Any], results: Mapping[str, Any],
                    goals: Sequence[Goal] = (), machine: Mapping[str, Any] | None = None,
                    started_at: float | None = None) -> dict[str, Any]:
    return {"schema": SCHEMA_VERSION, "kind": kind,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                        time.gmtime(started_at or time.time())),
            "machine": dict(machine if machine is not None else machine_info()),
            "settings": dict(settings), "results": dict(results),
            "goals": [g.to_dict() for g in goals]}


REQUIRED_KEYS = ("schema", "kind", "started_at", "machine", "settings", "results", "goals")


def check_document(doc: Mapping[str, Any]) -> None:
    """Raise ValueError when a result document lacks what readers rely on."""
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise ValueError(f"result document lacks {missing}")
    for key in ("cpu_model", "cores", "python", "torch", "confluent_kafka", "librdkafka"):
        if key not in doc["machine"]:
            raise ValueError(f"machine info lacks {key!r}")
    json.dumps(doc, allow_nan=True)  # serialisable


def write_document(doc: Mapping[str, Any], directory: Path = RESULTS_DIR) -> Path:
    check_document(doc)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = str(doc["started_at"]).replace(":", "").replace("-", "")
    path = directory / f"{doc['kind']}-{stamp}.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    (directory / f"{doc['kind']}-latest.json").write_text(path.read_text())
    return path


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB, from /proc/<pid>/status; None once it is gone."""
    return parse_vm_rss(_read(Path(f"/proc/{pid}/status")))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def parse_vm_rss(status_text: str) -> int | None:
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None
