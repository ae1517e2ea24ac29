"""End-to-end measurements against a real broker and Redis.

Each scenario gets its own topics (a fresh prefix) and consumer group, so runs
never see each other's records. Throughput: pre-produce N records, start the
worker process, time from its partition assignment to N committed records.
Latency: start the worker, produce at a steady rate (`produce_events`) and take,
per record, two latencies from the input record's timestamp (Kafka CreateTime):
to the score record's own timestamp (`event_to_score`: stamped inside the still-open
transaction, the old definition) and to the moment a `read_committed` consumer
polling the scores topic during the run got the score (`event_to_visible`: what a
downstream consumer sees, commit included; the goals use this one).

Load: the small synthetic set (`synthetic_events`: 977 customers, 1,999 terminals),
or, with `Env.load` set (`realistic_load`), skewed events at realistic cardinality
from `scorers.lab.sim.load.generate_load`, encoded in bulk (`to_payloads`), with the
Redis feature store warmed from their history so the primary has online features.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from benchmarks.cpu import CpuMeter
from benchmarks.report import latency_summary_ms, ratio
from stream_app.devstack.produce import produce_bulk, produce_events, synthetic_events
from stream_app.kafka.admin import create_rung_topics
from stream_app.kafka.readback import read_topic
from topics.catalog import TopicNames

if TYPE_CHECKING:
    from scorers.lab.sim.simulator import SimData

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class RealisticLoad:
    """Live events at realistic cardinality (their history is already in Redis)."""

    live: SimData
    settings: dict[str, Any]  # how it was drawn and warmed, for the result JSON


@dataclass(frozen=True, slots=True)
class Env:
    bootstrap: str
    redis_url: str
    primary_dir: Path
    fallback_dir: Path
    batch: dict[str, Any] = field(default_factory=dict)
    partitions: int = 6
    hang_s: float = 0.5
    load: RealisticLoad | None = None  # None: the small synthetic set
    service_pids: dict[str, int] = field(default_factory=dict)  # benchmarks.cpu.service_pids

    @property
    def client_conf(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap}


bench_events = synthetic_events
REALISTIC_LIVE_DAYS = 8  # live events spread over 8 days: 38 days of history ≈ 5 x live


def realistic_load(env: Env, n_live: int, customers: int = 100_000, terminals: int = 10_000,
                   seed: int = 11) -> RealisticLoad:
    """Draw `n_live` skewed events over `customers` / `terminals` (Zipf 0.5 customer
    activity, Zipf 1.0 terminal popularity, terminals near their customers) and warm
    the feature store at `env.redis_url` with the history those customers need."""
    from scorers.feature_store import RedisFeatureStore
    from scorers.lab.sim.demo import warm_from_data
    from scorers.lab.sim.load import WARM_HISTORY_DAYS, LoadConfig, generate_load, top_share
    from stream_app.config import load_settings
    from stream_app.wiring import redis_client

    cfg = LoadConfig(n_customers=customers, n_terminals=terminals,
                     live_days=REALISTIC_LIVE_DAYS)
    t0 = time.monotonic()
    load = generate_load(n_live, cfg, seed, history_days=WARM_HISTORY_DAYS, end_s=time.time())
    gen_s = time.monotonic() - t0
    settings = load_settings(redis__url=env.redis_url, redis__socket_timeout_s=10.0)
    warm_from_data(RedisFeatureStore(redis_client(settings)), load.history, "bench-hist")
    live = load.live
    return RealisticLoad(live, {
        "customers": customers, "terminals": terminals, "seed": seed,
        "customer_skew": cfg.customer_skew, "terminal_skew": cfg.terminal_skew,
        "placement": cfg.placement, "live_days": cfg.live_days, "live_events": len(live),
        "distinct_customers": len(set(live.customer.tolist())),
        "distinct_terminals": len(set(live.terminal.tolist())),
        "top1pct_customer_share": round(top_share(live.customer), 4),
        "top1pct_terminal_share": round(top_share(live.terminal), 4),
        "history_events_warmed": len(load.history), "generate_s": round(gen_s, 2),
        "warm_s": round(time.monotonic() - t0 - gen_s, 2)})


def produce_input(env: Env, topic: str, n: int, tag: str) -> None:
    """`n` input records as fast as the broker takes them: the small synthetic set, or the
    first `n` realistic events (ids `<tag>-<row>`, stamped with the produce time)."""
    if env.load is None:
        produce_events(env.client_conf, topic, bench_events(n, tag), rate_per_s=0,
                       max_events=n)
        return
    live = env.load.live
    if n > len(live):
        raise ValueError(f"{n} records asked, the realistic load holds {len(live)}")
    produce_bulk(env.client_conf, topic, n,
                 lambda lo, hi, stamp: _payloads(live, lo, hi, tag, stamp))


def _payloads(live: SimData, lo: int, hi: int, tag: str,
              stamp: float) -> tuple[list[bytes], list[bytes]]:
    from scorers.lab.sim.convert import to_payloads

    return to_payloads(live, lo, hi, tag, stamp)


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
        out["primary_share"] = ratio(done["tiers"].get("primary", 0),
                                     sum(done["tiers"].values()) or None)
    if "gc" in done:
        out["gc_pauses"] = done["gc"]
    if "fetch" in done:
        out["feature_fetch"] = done["fetch"]
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
    produce_input(env, names.transactions, n, prefix)
    worker = WorkerProc(env, mode, prefix, n)
    try:
        assigned = worker.wait_event("assigned", 120.0)
        meter = CpuMeter({"worker": worker.proc.pid, **env.service_pids}).start()
        done = worker.wait_event("done", 300.0)
        cpu = meter.stop(int(done["records"]))
    finally:
        worker.finish()
    out = _scored(done, float(done["t"]) - float(assigned["t"]))
    out["cpu"] = cpu  # benchmarks.cpu: CPU µs per record by process, assigned → done
    return out


WARM_UP_S = 8.0  # seconds of load produced before the measured window


class ScoreWatcher:
    """A downstream consumer: `read_committed`, polling the scores topic during the run;
    `seen[key]` is the wall-clock ms at which the poll returned the committed score."""

    def __init__(self, env: Env, topic: str) -> None:
        self.seen: dict[bytes, float] = {}
        self._stop = threading.Event()
        self._consumer = Consumer({**env.client_conf, "group.id": f"{topic}-watch",
                                   "isolation.level": "read_committed",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 5,
                                   "enable.partition.eof": False})
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                               for p in range(env.partitions)])
        self._thread = threading.Thread(target=self._run, name="score-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seen, consume = self.seen, self._consumer.consume
        try:
            while not self._stop.is_set():
                msgs = consume(num_messages=10_000, timeout=0.05)
                now_ms = time.time() * 1000.0
                for m in msgs:
                    key = m.key()
                    if m.error() is None and key is not None and key not in seen:
                        seen[key] = now_ms
        finally:
            self._consumer.close()

    def wait_for(self, n: int, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while len(self.seen) < n and time.monotonic() < end:
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)


def latency(env: Env, mode: str, rate_per_s: float, duration_s: float) -> dict[str, Any]:
    """Event-to-score and event-to-visible latency with records produced at a steady rate."""
    prefix, names = fresh_topics(env, f"lat-{mode}")
    n = max(1, int(rate_per_s * duration_s))
    # The load generator's own idempotent producer delivers late for its first seconds
    # (PID and metadata), which would be charged to rung: those records are produced
    # and scored at the same rate, but left out of the statistics.
    n_warm = int(rate_per_s * WARM_UP_S)
    events = itertools.chain(bench_events(n_warm, f"{prefix}-warm"), bench_events(n, prefix))
    worker = WorkerProc(env, mode, prefix, n_warm + n)
    watcher: ScoreWatcher | None = None
    try:
        worker.wait_event("assigned", 120.0)
        watcher = ScoreWatcher(env, names.scores)
        time.sleep(1.0)  # let the first fetch settle before the clock matters
        report = produce_events(env.client_conf, names.transactions, events,
                                rate_per_s=rate_per_s, max_events=n_warm + n)
        done = worker.wait_event("done", 300.0)
        watcher.wait_for(n_warm + n, 10.0)
    finally:
        if watcher is not None:
            watcher.stop()
        worker.finish()
    warm = f"{prefix}-warm".encode()
    inputs = {r.key: r.timestamp_ms for r in read_topic(env.client_conf, names.transactions)
              if r.key is not None and not r.key.startswith(warm)}
    scores = read_topic(env.client_conf, names.scores)
    lat = [float(r.timestamp_ms - inputs[r.key]) for r in scores if r.key in inputs]
    visible = [seen_ms - inputs[k] for k, seen_ms in watcher.seen.items() if k in inputs]
    out = _scored(done, report.seconds)
    out.update(target_rate_per_s=rate_per_s, produced_rate_per_s=report.sent / report.seconds,
               event_to_visible=latency_summary_ms(visible),
               event_to_score=latency_summary_ms(lat))
    return out


def faust_drain(env: Env, n: int, timeout_s: float = 240.0) -> dict[str, Any]:
    """rung's faust runtime (`rung run --runtime faust`) draining `n` records.

    faust reports no assignment to us, so the clock starts at its first output
    record and counts the records after it."""
    prefix, names = fresh_topics(env, "faust")
    produce_input(env, names.transactions, n, prefix)
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
