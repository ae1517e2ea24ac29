"""`make bench` / `python -m benchmarks.run`: everything measured in one run.

Against `KAFKA_BOOTSTRAP_SERVERS` / `REDIS_URL` when set, else a `LocalStack`
in a temporary directory. Throughput scenarios run `--rounds` times in a
rotating order (the median counts) so a noisy machine hits all of them alike;
ratios are to the passthrough measured in this same run. Writes
`benchmarks/results/bench-<time>.json` (and `bench-latest.json`), prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.e2e import Env, drain, faust_drain, latency
from benchmarks.models import model_dirs
from benchmarks.report import (
    Goal,
    evaluate_goals,
    ratio,
    result_document,
    throughput,
    write_document,
)

SCENARIOS = ("passthrough", "healthy", "breaker_open", "hang")
LOAD_LEVELS = {"load_50": 0.5, "load_90": 0.9}


@contextlib.contextmanager
def services(run_dir: Path) -> Iterator[tuple[str, str, str]]:
    """(bootstrap, redis_url, "env" | "local-stack")."""
    bootstrap, redis_url = os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), os.environ.get("REDIS_URL")
    if bootstrap and redis_url:
        yield bootstrap, redis_url, "env"
        return
    from stream_app.devstack.stack import LocalStack

    stack = LocalStack(run_dir / "stack")
    state = stack.up()
    try:
        yield state.bootstrap_servers, state.redis_url, "local-stack"
    finally:
        stack.down()


def median_run(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, plus every run's rate."""
    ok = [r for r in runs if isinstance(r.get("records_per_s"), (int, float))]
    if not ok:
        return {"error": "no successful run", "runs": list(runs)}
    ranked = sorted(ok, key=lambda r: float(r["records_per_s"]))
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    chosen["runs_records_per_s"] = [r.get("records_per_s") for r in runs]
    return chosen


def measure_throughput(env: Env, records: int, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SCENARIOS}
    # One discarded run first: the broker's group and transaction coordinators load,
    # the JVM warms up; otherwise whichever scenario runs first is measured cold.
    try:
        drain(env, "passthrough", max(1000, records // 4))
    except Exception as exc:  # noqa: BLE001
        print(f"warm-up run failed: {exc}")
    for r in range(rounds):
        order = SCENARIOS[r % len(SCENARIOS):] + SCENARIOS[:r % len(SCENARIOS)]
        for scenario in order:
            try:
                runs[scenario].append(drain(env, scenario, records))
            except Exception as exc:  # noqa: BLE001 - one failed scenario is reported, not fatal
                runs[scenario].append({"error": str(exc)[-1500:]})
    out = {s: median_run(v) for s, v in runs.items()}
    base = throughput({"throughput": out}, "passthrough")
    for s in SCENARIOS:
        out[s]["ratio_to_passthrough"] = ratio(throughput({"throughput": out}, s), base)
    return out


def measure_latency(env: Env, max_rate: float | None, seconds: float) -> dict[str, Any]:
    if not max_rate:
        return {"error": "no healthy throughput to take a load level from"}
    out: dict[str, Any] = {}
    for name, share in LOAD_LEVELS.items():
        try:
            out[name] = latency(env, "healthy", max_rate * share, seconds)
            out[name]["load_share"] = share
        except Exception as exc:  # noqa: BLE001
            out[name] = {"error": str(exc)[-1500:]}
    return out


def measure_cache(env: Env, records: int, healthy: float | None) -> dict[str, Any]:
    """One healthy drain with the prediction cache on (it is off by default): its hit rate
    on this load and what it costs per batch, and the throughput beside the cache-off one."""
    try:
        run = drain(env, "healthy_cache", records)
    except Exception as exc:  # noqa: BLE001
        return {"error": str(exc)[-1500:]}
    out = dict(run.get("prediction_cache") or {})
    out["records_per_s"] = run.get("records_per_s")
    out["ratio_to_healthy_cache_off"] = ratio(run.get("records_per_s"), healthy)
    out["tiers"] = run.get("tiers")
    return out


def measure_faust(env: Env, records: int, healthy: float | None) -> dict[str, Any]:
    if importlib.util.find_spec("stream_app.faust_runtime") is None:
        return {"missing": "stream_app/faust_runtime.py is not in the tree"}
    try:
        result = faust_drain(env, records)
    except Exception as exc:  # noqa: BLE001
        return {"error": str(exc)[-1500:]}
    result["ratio_to_healthy"] = ratio(result.get("records_per_s"), healthy)
    return result


def measure_replay_if_present(env: Env, records: int) -> dict[str, Any]:
    if importlib.util.find_spec("benchmarks.replay") is None:
        return {"missing": "benchmarks/replay.py is not in the tree"}
    from benchmarks.replay import measure_replay

    try:
        return measure_replay(env.bootstrap, records, redis_url=env.redis_url,
                              primary_dir=env.primary_dir)
    except Exception as exc:  # noqa: BLE001
        return {"error": str(exc)[-1500:]}


def _fmt(value: Any, digits: int = 0) -> str:
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return "—"


def print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    res = doc["results"]
    t = Table(title=f"rung benchmarks — {doc['machine']['cpu_model']}, "
                    f"{doc['machine']['cores']} cores")
    for col in ("scenario", "records/s", "× passthrough", "ladder p99 ms", "tiers"):
        t.add_column(col)
    for name, r in res.get("throughput", {}).items():
        t.add_row(name, _fmt(r.get("records_per_s")), _fmt(r.get("ratio_to_passthrough"), 2),
                  _fmt((r.get("ladder_latency") or {}).get("p99_ms"), 1),
                  ", ".join(f"{k}={v}" for k, v in (r.get("tiers") or {}).items())
                  or r.get("error", "")[:60])
    faust = res.get("faust", {})
    t.add_row("faust", _fmt(faust.get("records_per_s")),
              _fmt(ratio(faust.get("records_per_s"), throughput(res, "passthrough")), 2), "—",
              faust.get("missing") or faust.get("error", "")[:60])
    Console().print(t)
    lat = Table(title="event-to-score latency (healthy)")
    for col in ("load", "rate/s", "p50 ms", "p99 ms", "p99.9 ms"):
        lat.add_column(col)
    for name, r in res.get("latency", {}).items():
        e = r.get("event_to_score") or {}
        lat.add_row(name, _fmt(r.get("target_rate_per_s")), _fmt(e.get("p50_ms"), 1),
                    _fmt(e.get("p99_ms"), 1), _fmt(e.get("p999_ms"), 1))
    Console().print(lat)
    goals = Table(title="goals")
    for col in ("goal", "measured", "limit", "met"):
        goals.add_column(col)
    for g in doc["goals"]:
        goals.add_row(g["name"], _fmt(g["measured"], 2), _fmt(g["limit"], 2), str(g["met"]))
    Console().print(goals)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--records", type=int, default=40_000, help="records per throughput run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--latency-seconds", type=float, default=15.0)
    p.add_argument("--skip", action="append", default=[],
                   choices=["latency", "faust", "replay", "micro", "cache"])
    args = p.parse_args(argv)
    from stream_app.logs import configure_logging

    configure_logging("console", "warning")
    started = time.time()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rung-bench-") as tmp, \
            services(Path(tmp)) as (bootstrap, redis_url, source):
        primary, fallback, models = model_dirs(Path(tmp) / "models")
        env = Env(bootstrap, redis_url, primary, fallback)
        drain(env, "passthrough", 2000)  # warm the broker's transaction coordinator
        results["throughput"] = measure_throughput(env, args.records, args.rounds)
        healthy = throughput(results, "healthy")
        if "cache" not in args.skip:
            results["prediction_cache"] = measure_cache(env, args.records, healthy)
        if "latency" not in args.skip:
            results["latency"] = measure_latency(env, healthy, args.latency_seconds)
        if "faust" not in args.skip:
            results["faust"] = measure_faust(env, args.records, healthy)
        if "replay" not in args.skip:
            results["replay"] = measure_replay_if_present(env, args.records)
        if "micro" not in args.skip:
            from benchmarks.micro import run_micro

            results["micro"] = run_micro(primary, fallback)
    from scorers.config import LadderConfig
    from stream_app.config import BatchSettings, RedisSettings

    batch = BatchSettings()
    settings = {"records": args.records, "rounds": args.rounds,
                "latency_seconds": args.latency_seconds, "services": source, "models": models,
                "partitions": env.partitions, "hang_s": env.hang_s, "batch": batch.model_dump(),
                "redis_socket_timeout_s": RedisSettings().socket_timeout_s,
                "feature_timeout_s": LadderConfig().feature_timeout_s,
                "delivery": "exactly_once", "workers": "one subprocess per scenario"}
    goals: list[Goal] = evaluate_goals(results, batch.deadline_s)
    doc = result_document("bench", settings, results, goals, started_at=started)
    path = write_document(doc)
    print_table(doc)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
