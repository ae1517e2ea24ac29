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
import dataclasses
import importlib.util
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.cpu import cpu_budget, service_pids
from benchmarks.e2e import Env, drain, faust_drain, latency, realistic_load
from benchmarks.models import model_dirs
from benchmarks.quick_ack import measure_quick_ack
from benchmarks.report import (
    HEALTHY_RATIO_GOAL,
    Goal,
    evaluate_goals,
    ratio,
    result_document,
    throughput,
    write_document,
)

SCENARIOS = ("passthrough", "healthy", "breaker_open", "hang")
REALISTIC_SCENARIOS = ("passthrough", "healthy")
LOAD_LEVELS = {"load_50": 0.5, "load_90": 0.9}
SHADOW_ROUNDS = 3  # alternating off/on drains, median (benchmarks/shadow.py): one run varies ±30%
SHADOW_RECORDS = 150_000  # per drain: start-up transients must not dominate
SHADOW_INTERLEAVED_S = 120.0  # on/off windows inside one run (benchmarks/shadow_interleaved.py)


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


def measure_throughput(env: Env, records: int, rounds: int,
                       scenarios: Sequence[str] = SCENARIOS) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in scenarios}
    # One discarded run first: the broker's group and transaction coordinators load,
    # the JVM warms up; otherwise whichever scenario runs first is measured cold.
    try:
        drain(env, "passthrough", max(1000, records // 4))
    except Exception as exc:  # noqa: BLE001
        print(f"warm-up run failed: {exc}")
    for r in range(rounds):
        order = tuple(scenarios[r % len(scenarios):]) + tuple(scenarios[:r % len(scenarios)])
        for scenario in order:
            try:
                runs[scenario].append(drain(env, scenario, records))
            except Exception as exc:  # noqa: BLE001 - one failed scenario is reported, not fatal
                runs[scenario].append({"error": str(exc)[-1500:]})
    out = {s: median_run(v) for s, v in runs.items()}
    base = throughput({"throughput": out}, "passthrough")
    for s in scenarios:
        out[s]["ratio_to_passthrough"] = ratio(throughput({"throughput": out}, s), base)
    if "healthy" in out and base:  # what the ratio goal would take at today's CPU cost
        out["healthy"]["cpu_budget"] = cpu_budget(out["healthy"], HEALTHY_RATIO_GOAL * base)
    return out


def warm_broker(env: Env, records: int, max_runs: int = 4,
                tolerance: float = 0.15) -> dict[str, Any]:
    """Passthrough drains of `records` until two in a row agree within `tolerance`
    (at most `max_runs`): a fresh broker's transactions get several times faster over
    its first minutes (coordinators loading, the JVM compiling the hot paths), and a
    ratio against a cold passthrough flatters whatever runs after it."""
    rates: list[float] = []

    def settled() -> bool:
        return len(rates) >= 2 and abs(rates[-1] - rates[-2]) <= tolerance * max(rates[-2:])

    while len(rates) < max_runs and not settled():
        try:
            rates.append(round(float(drain(env, "passthrough", records)["records_per_s"]), 1))
        except Exception as exc:  # noqa: BLE001 - a failed warm-up is reported, not fatal
            return {"records": records, "runs_records_per_s": rates, "error": str(exc)[-1500:]}
    return {"records": records, "runs_records_per_s": rates, "tolerance": tolerance,
            "settled": settled()}


def measure_realistic(env: Env, records: int, rounds: int, customers: int,
                      terminals: int, quick_ack_rounds: int = 3) -> dict[str, Any]:
    """Passthrough and healthy on skewed load at realistic cardinality (its history warmed
    into Redis first), `rounds` rounds; what the load looks like is in `load`."""
    try:
        load = realistic_load(env, records, customers, terminals)
    except Exception as exc:  # noqa: BLE001
        return {"error": f"realistic load: {str(exc)[-1500:]}"}
    real = dataclasses.replace(env, load=load)
    out = {"load": load.settings, "rounds": rounds, "records": records,
           "throughput": measure_throughput(real, records, rounds, REALISTIC_SCENARIOS)}
    if quick_ack_rounds:  # benchmarks/quick_ack.py: the feature store's delayed ACKs
        out["quick_ack"] = measure_quick_ack(real, records, quick_ack_rounds)
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
            continue
        # The floor under the same load: rung's Kafka edge without scoring, same batching,
        # same transactions, same read-back consumer, right after.
        try:
            base = latency(env, "passthrough", max_rate * share, seconds)
            out[name]["passthrough"] = {k: base.get(k) for k in (
                "records", "produced_rate_per_s", "event_to_visible", "event_to_score")}
        except Exception as exc:  # noqa: BLE001
            out[name]["passthrough"] = {"error": str(exc)[-1500:]}
    return out


def measure_overload_safely(env: Env, max_rate: float | None,
                            seconds: float) -> dict[str, Any]:
    """120% of the healthy maximum for `seconds`, then 50% for half as long
    (`benchmarks.overload`)."""
    if not max_rate:
        return {"error": "no healthy throughput to take a load level from"}
    from benchmarks.overload import measure_overload

    try:
        out = measure_overload(env, max_rate, seconds_over=seconds, seconds_after=seconds / 2)
    except Exception as exc:  # noqa: BLE001
        return {"error": str(exc)[-1500:]}
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
    rows = [(name, r) for name, r in res.get("throughput", {}).items()]
    rows += [(f"realistic {name}", r) for name, r in
             ((res.get("realistic") or {}).get("throughput") or {}).items()]
    for name, r in rows:
        t.add_row(name, _fmt(r.get("records_per_s")), _fmt(r.get("ratio_to_passthrough"), 2),
                  _fmt((r.get("ladder_latency") or {}).get("p99_ms"), 1),
                  ", ".join(f"{k}={v}" for k, v in (r.get("tiers") or {}).items())
                  or r.get("error", "")[:60])
    faust = res.get("faust", {})
    t.add_row("faust", _fmt(faust.get("records_per_s")),
              _fmt(ratio(faust.get("records_per_s"), throughput(res, "passthrough")), 2), "—",
              faust.get("missing") or faust.get("error", "")[:60])
    Console().print(t)
    lat = Table(title="latency (healthy): input CreateTime → committed score read back "
                      "(read_committed) | → score record's timestamp")
    for col in ("load", "rate/s", "read-back p50 / p99 / p99.9 ms",
                "score stamp p50 / p99 / p99.9 ms", "passthrough read-back p50 / p99 ms"):
        lat.add_column(col)
    for name, r in res.get("latency", {}).items():
        v, e = r.get("event_to_visible") or {}, r.get("event_to_score") or {}
        pv = (r.get("passthrough") or {}).get("event_to_visible") or {}
        lat.add_row(name, _fmt(r.get("target_rate_per_s")),
                    " / ".join(_fmt(v.get(k), 1) for k in ("p50_ms", "p99_ms", "p999_ms")),
                    " / ".join(_fmt(e.get(k), 1) for k in ("p50_ms", "p99_ms", "p999_ms")),
                    " / ".join(_fmt(pv.get(k), 1) for k in ("p50_ms", "p99_ms")))
    Console().print(lat)
    cpu = Table(title="CPU per committed record (worker + broker + Redis), healthy drains")
    for col in ("set", "µs/record worker / services", "cores needed at 0.8×", "cores",
                "worker µs/record that would fit"):
        cpu.add_column(col)
    for name, tp in (("small", res.get("throughput") or {}),
                     ("realistic", (res.get("realistic") or {}).get("throughput") or {})):
        b = (tp.get("healthy") or {}).get("cpu_budget") or {}
        cpu.add_row(name, f"{_fmt(b.get('us_per_record_worker'), 1)} / "
                          f"{_fmt(b.get('us_per_record_services'), 1)}",
                    _fmt(b.get("cores_needed_at_goal"), 2), _fmt(b.get("cores")),
                    _fmt(b.get("worker_us_per_record_that_fits"), 1))
    Console().print(cpu)
    goals = Table(title="goals")
    for col in ("goal", "measured", "limit", "met"):
        goals.add_column(col)
    for g in doc["goals"]:
        digits = 3 if isinstance(g["limit"], (int, float)) and g["limit"] < 10 else 1
        goals.add_row(g["name"], _fmt(g["measured"], digits), _fmt(g["limit"], digits),
                      "withheld" if g.get("withheld") else str(g["met"]))
    Console().print(goals)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--records", type=int, default=200_000,
                   help="records per throughput run (small and realistic sets); long enough "
                        "that the worker's start and the broker's first transactions do not "
                        "decide the rate")
    p.add_argument("--ab-records", type=int, default=40_000,
                   help="records per drain of the side-by-side runs (cache, faust, GIL)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--latency-seconds", type=float, default=15.0)
    p.add_argument("--realistic-records", type=int, default=None,
                   help="records per realistic-set run (default: --records)")
    p.add_argument("--realistic-rounds", type=int, default=2)
    p.add_argument("--replay-records", type=int, default=200_000,
                   help="records of the replay benchmark (passthrough and ladder, 2 rounds)")
    p.add_argument("--customers", type=int, default=100_000, help="realistic set")
    p.add_argument("--terminals", type=int, default=10_000, help="realistic set")
    p.add_argument("--skip", action="append", default=[],
                   choices=["latency", "faust", "replay", "micro", "cache", "realistic",
                            "overload", "tracing", "shadow", "serde", "gil"])
    p.add_argument("--overload-seconds", type=float, default=60.0,
                   help="seconds at 120%% of the healthy maximum (then half as long at 50%%)")
    args = p.parse_args(argv)
    realistic_records = args.realistic_records or args.records
    from stream_app.logs import configure_logging

    configure_logging("console", "warning")
    started = time.time()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rung-bench-") as tmp, \
            services(Path(tmp)) as (bootstrap, redis_url, source):
        primary, fallback, models = model_dirs(Path(tmp) / "models")
        env = Env(bootstrap, redis_url, primary, fallback,
                  service_pids=service_pids(bootstrap, redis_url))
        results["broker_warm_up"] = warm_broker(env, args.records)
        results["throughput"] = measure_throughput(env, args.records, args.rounds)
        healthy = throughput(results, "healthy")
        if "realistic" not in args.skip:
            results["realistic"] = measure_realistic(env, realistic_records,
                                                     args.realistic_rounds, args.customers,
                                                     args.terminals)
        if "cache" not in args.skip:
            results["prediction_cache"] = measure_cache(env, args.ab_records, healthy)
        if "latency" not in args.skip:
            results["latency"] = measure_latency(env, healthy, args.latency_seconds)
        if "overload" not in args.skip:
            results["overload"] = measure_overload_safely(env, healthy, args.overload_seconds)
        if "faust" not in args.skip:
            results["faust"] = measure_faust(env, args.ab_records, healthy)
        if "shadow" not in args.skip:  # benchmarks/shadow.py: live cost of a challenger
            from benchmarks.shadow import measure_shadow

            results["shadow"] = measure_shadow(env, SHADOW_RECORDS, SHADOW_ROUNDS,
                                               seconds=args.latency_seconds,
                                               interleaved_s=SHADOW_INTERLEAVED_S)
        if "gil" not in args.skip:  # benchmarks/gil.py: the worker's GIL switch interval
            from benchmarks.gil import measure_gil

            results["gil"] = measure_gil(env, args.ab_records, rounds=3, batches=100)
        if "replay" not in args.skip:
            results["replay"] = measure_replay_if_present(env, args.replay_records)
        if "micro" not in args.skip:
            from benchmarks.micro import run_micro

            results["micro"] = run_micro(primary, fallback)
        from benchmarks.forward import measure_forward_or_error  # as served vs file weights

        results["forward"] = measure_forward_or_error(primary)
        from benchmarks.explain import measure_explain_or_error  # µs per reviewed record

        results["explain"] = measure_explain_or_error(primary, fallback)
        if "serde" not in args.skip:  # µs per record per format (benchmarks/serde.py)
            from benchmarks.serde import run as run_serde

            results["serde"] = run_serde()["results"]
        if "tracing" not in args.skip:  # in process: tracing off vs on (benchmarks/tracing.py)
            from benchmarks.tracing import run_tracing

            results["tracing"] = run_tracing(healthy_records_per_s=healthy)
    from scorers.config import LadderConfig
    from stream_app.config import BatchSettings, RedisSettings

    batch = BatchSettings()
    settings = {"records": args.records, "rounds": args.rounds, "ab_records": args.ab_records,
                "realistic": {"records": realistic_records,
                              "rounds": args.realistic_rounds, "customers": args.customers,
                              "terminals": args.terminals,
                              "scenarios": list(REALISTIC_SCENARIOS),
                              "note": "fewer rounds than the small set (time)"},
                "latency_definitions": {
                    "event_to_visible": "input CreateTime -> wall time a read_committed "
                                        "consumer polling the scores topic got the score "
                                        "(the goals use this)",
                    "event_to_score": "input CreateTime -> score record timestamp "
                                      "(produced inside the open transaction)"},
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
