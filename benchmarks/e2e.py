"""End-to-end measurements against a real broker and Redis.

Each scenario gets its own topics (a fresh prefix) and consumer group, so runs
never see each other's records. Throughput: pre-produce N records, start the
worker process, time from its partition assignment to N committed records.
Latency: start the worker, produce at a steady rate (`produce_events`), read
inputs and scores back and take score timestamp − input timestamp, as
`stream_app.devstack.demo` does.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from benchmarks.report import latency_summary_ms
from stream_app.devstack.produce import produce_events, synthetic_events
from stream_app.kafka.admin import create_rung_topics
from stream_app.kafka.readback import read_topic
from topics.catalog import TopicNames

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class Env:
    bootstrap: str
    redis_url: str
    primary_dir: Path
    fallback_dir: Path
    batch: dict[str, Any] = field(default_factory=dict)
    partitions: int = 6
    hang_s: float = 0.5

    @property
    def client_conf(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap}


bench_events = synthetic_events


def fresh_topics(env: Env, name: str) -> tuple[str, TopicNames]:
    prefix = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    names = TopicNames.with_prefix(prefix)
    create_rung_topics(env.client_conf, names, partitions=env.partitions)
    return prefix, names


class WorkerProc:
    """`python -m benchmarks.worker_proc` and its JSON event lines."""

    def __init__(self, env: Env, mode: str, prefix: str, expect: int,
                 timeout_s: float = 300.0) -> None:
        cfg = {"mode": mode, "bootstrap": env.bootstrap, "redis_url": env.redis_url,
               "prefix": prefix, "group": f"{prefix}-g", "expect": expect,
               "primary_dir": str(env.primary_dir), "fallback_dir": str(env.fallback_dir),
               "batch": env.batch, "hang_s": env.hang_s, "timeout_s": timeout_s}
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.worker_proc",
                                      json.dumps(cfg)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def wait_event(self, name: str, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if not ready:
                if self.proc.poll() is not None:
                    break
                continue
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith('{"event"'):
                event: dict[str, Any] = json.loads(line)
                if event["event"] == name:
                    return event
        self.kill()
        raise RuntimeError(f"worker gave no {name!r} event: {self.stderr_tail()}")

    def finish(self, timeout_s: float = 60.0) -> None:
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stderr_tail(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(still running)"
        return self.proc.stderr.read()[-3000:]


def _scored(done: dict[str, Any], seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {"records": done["records"], "seconds": round(seconds, 4),
                           "records_per_s": done["records"] / seconds if seconds > 0 else None}
    if "batch_s" in done:
        out["ladder_latency"] = latency_summary_ms([s * 1000.0 for s in done["batch_s"]])
        out["batches"] = len(done["batch_s"])
        out["tiers"], out["reasons"] = done["tiers"], done["reasons"]
    if "cache" in done:
        out["prediction_cache"] = cache_summary(done["cache"], len(done.get("batch_s", ())))
    return out


def cache_summary(cache: dict[str, Any], batches: int) -> dict[str, Any]:
    """Hit rate of the prediction cache and what it cost per scored batch (lookup + write)."""
    lookups = cache.get("lookups", {})
    seconds = cache.get("seconds", {})
    total = sum(lookups.values())
    hits = lookups.get("hit", 0) + lookups.get("stale", 0)
    spent_s = sum(seconds.values())
    return {"lookups": total, "hits": hits, "hit_rate": hits / total if total else None,
            "lookup_ms_per_batch": 1000 * seconds.get("cache", 0.0) / batches if batches else None,
            "write_ms_per_batch": (1000 * seconds.get("cache_after", 0.0) / batches
                                   if batches else None),
            "ms_per_batch": 1000 * spent_s / batches if batches else None}


def drain(env: Env, mode: str, n: int) -> dict[str, Any]:
    """Throughput of one worker draining `n` pre-produced records."""
    prefix, names = fresh_topics(env, mode)
    produce_events(env.client_conf, names.transactions, bench_events(n, prefix), rate_per_s=0,
                   max_events=n)
    worker = WorkerProc(env, mode, prefix, n)
    try:
        assigned = worker.wait_event("assigned", 120.0)
        done = worker.wait_event("done", 300.0)
    finally:
        worker.finish()
    return _scored(done, float(done["t"]) - float(assigned["t"]))


WARM_UP_S = 8.0  # seconds of load produced before the measured window


def latency(env: Env, mode: str, rate_per_s: float, duration_s: float) -> dict[str, Any]:
    """Event-to-score latency with records produced at a steady rate."""
    prefix, names = fresh_topics(env, f"lat-{mode}")
    n = max(1, int(rate_per_s * duration_s))
    # The load generator's own idempotent producer delivers late for its first seconds
    # (PID and metadata), which would be charged to rung: those records are produced
    # and scored at the same rate, but left out of the statistics.
    n_warm = int(rate_per_s * WARM_UP_S)
    events = itertools.chain(bench_events(n_warm, f"{prefix}-warm"), bench_events(n, prefix))
    worker = WorkerProc(env, mode, prefix, n_warm + n)
    try:
        worker.wait_event("assigned", 120.0)
        time.sleep(1.0)  # let the first fetch settle before the clock matters
        report = produce_events(env.client_conf, names.transactions, events,
                                rate_per_s=rate_per_s, max_events=n_warm + n)
        done = worker.wait_event("done", 300.0)
    finally:
        worker.finish()
    warm = f"{prefix}-warm".encode()
    inputs = {r.key: r.timestamp_ms for r in read_topic(env.client_conf, names.transactions)
              if r.key is not None and not r.key.startswith(warm)}
    scores = read_topic(env.client_conf, names.scores)
    lat = [float(r.timestamp_ms - inputs[r.key]) for r in scores if r.key in inputs]
    out = _scored(done, report.seconds)
    out.update(target_rate_per_s=rate_per_s, produced_rate_per_s=report.sent / report.seconds,
               event_to_score=latency_summary_ms(lat))
    return out


def faust_drain(env: Env, n: int, timeout_s: float = 240.0) -> dict[str, Any]:
    """rung's faust runtime (`rung run --runtime faust`) draining `n` records.

    faust reports no assignment to us, so the clock starts at its first output
    record and counts the records after it."""
    prefix, names = fresh_topics(env, "faust")
    produce_events(env.client_conf, names.transactions, bench_events(n, prefix), rate_per_s=0,
                   max_events=n)
    run_env = {**os.environ, "RUNG_KAFKA__BOOTSTRAP_SERVERS": env.bootstrap,
               "RUNG_REDIS__URL": env.redis_url, "RUNG_TOPICS__PREFIX": prefix,
               "RUNG_KAFKA__GROUP_ID": f"{prefix}-g", "RUNG_METRICS__ENABLED": "false",
               "RUNG_MODELS__PRIMARY_DIR": str(env.primary_dir),
               "RUNG_MODELS__FALLBACK_DIR": str(env.fallback_dir),
               "RUNG_MODELS__DEVICE": "cpu", "RUNG_LOG__FORMAT": "json",
               "RUNG_LOG__LEVEL": "warning",
               **{f"RUNG_BATCH__{k.upper()}": str(v) for k, v in env.batch.items()}}
    proc = subprocess.Popen([sys.executable, "-m", "stream_app.cli.app", "run", "--runtime", "faust"],
                            cwd=REPO_ROOT, env=run_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    consumer = Consumer({**env.client_conf, "group.id": f"{prefix}-watch"})
    try:
        first: tuple[float, int] | None = None
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and proc.poll() is None:
            count = sum(consumer.get_watermark_offsets(TopicPartition(names.scores, p),
                                                       timeout=5.0)[1]
                        for p in range(env.partitions))
            now = time.monotonic()
            if count and first is None:
                first = (now, count)
            if count >= n and first is not None:
                seconds = now - first[0]
                return {"records": n - first[1], "seconds": round(seconds, 4),
                        "records_per_s": (n - first[1]) / seconds if seconds > 0 else None}
            time.sleep(0.05)
        err = proc.stderr.read()[-2000:] if proc.poll() is not None and proc.stderr else ""
        return {"error": f"faust runtime did not drain {n} records in {timeout_s}s", "stderr": err}
    finally:
        consumer.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
