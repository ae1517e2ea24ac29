"""`make bench-soak` / `python -m benchmarks.soak`: a 30-minute soak at 50% of the maximum.

    python -m benchmarks.soak --minutes 30 [--rate R] [--every-s 5] [--pool 500000]

What runs: one `rung run` worker (`stream_app.devstack.process.WorkerProcess`, the
production entry point with its default settings and the benchmark models) on the
local stack (`benchmarks.run.services`, or `KAFKA_BOOTSTRAP_SERVERS` / `REDIS_URL`),
fed at a steady `--rate` for `--minutes`: by default half of the realistic set's
healthy maximum from the newest `docs/results/bench-*.json`
(`results.realistic.throughput.healthy.records_per_s`).

Load: the realistic set (`benchmarks.e2e.realistic_load`: 100,000 customers, 10,000
terminals, Zipf-skewed activity and popularity, terminals near their customers, the
history of every drawn customer warmed into Redis). Thirty minutes at ~6,000/s is
~11 M events; drawing and warming that many would take longer than the soak and
gigabytes, so `--pool` live events are drawn once and cycled (`PoolCycle`): each lap
in a fresh random order, every record with a fresh transaction id and stamped with
the wall-clock time it is produced. The features stay realistic because the
population is the generator's (same customers, terminals, skew and placement, so the
feature store holds the same keys a fresh draw would touch), event times move forward
with the clock (windows slide, the worker's own aggregates grow as they would), and
fresh ids keep the prediction cache and duplicate checks from seeing repeats.

Sampled every `--every-s` (`Sample`, pure side in `benchmarks.soak_stats`): the
worker's VmRSS from /proc; its /metrics (`rung_scores_total` by tier,
`rung_degraded_total` by reason, `rung_dead_letter_total`, `rung_gc_pause_seconds`);
the read-back latency of every score a `read_committed` consumer
(`benchmarks.e2e.ScoreWatcher`) saw in that interval, from the record's produce stamp
(carried in its key) to the poll that returned it; and the group's lag from committed
offsets (`benchmarks.overload.LagSampler`, same period).

Writes `benchmarks/results/soak-<time>.json` (kind "soak"; `results.soak` keeps
`rss_growth_ratio`, the key `make bench`'s goal reads) and a plot (`--plot`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from confluent_kafka import KafkaError, Message, Producer

from benchmarks.e2e import REPO_ROOT, Env, ScoreWatcher, fresh_topics, realistic_load
from benchmarks.models import model_dirs
from benchmarks.overload import LagSampler
from benchmarks.report import result_document, rss_kib, write_document
from benchmarks.run import services
from benchmarks.soak_stats import (
    Sample,
    WorkerCounters,
    parse_worker_metrics,
    plot_series,
    readback_latencies,
    realistic_max_rate,
    rss_summary,
    soak_goals,
    summarize,
)
from scorers.lab.sim.convert import to_payloads
from scorers.lab.sim.simulator import SimData
from stream_app.config import BatchSettings
from stream_app.devstack.process import WorkerProcess

COMMITTED_RESULTS = REPO_ROOT / "docs" / "results"
DEFAULT_PLOT = REPO_ROOT / "docs" / "img" / "soak.png"
LOAD_SHARE = 0.5  # of the realistic healthy maximum
MAX_WARM_UP_S = 60.0
TICK_S = 0.005  # the producer's pacing step; one stamp per tick
DRAIN_TIMEOUT_S = 180.0  # after the last record: wait this long for every score
__all__ = ["PacedProducer", "PoolCycle", "harvest", "main", "rss_summary", "soak"]


class PoolCycle:
    """Records from a pool of live events, lap after lap, each lap in a new random order.

    `take(n, stamp_s)` returns the next `n` (keys, values), every event stamped
    `stamp_s`, keys `<tag>-<lap>-<stamp_ms>-<row>` (unique: lap and row)."""

    def __init__(self, pool: SimData, tag: str, seed: int = 0) -> None:
        if len(pool) == 0:
            raise ValueError("an empty pool")
        self._pool, self._tag, self._seed = pool, tag, seed
        self.lap, self._next = 0, 0
        self._order = pool

    def take(self, n: int, stamp_s: float) -> tuple[list[bytes], list[bytes]]:
        stamp_ms = int(stamp_s * 1000.0)
        keys: list[bytes] = []
        values: list[bytes] = []
        while n > 0:
            if self._next == len(self._order):
                self.lap += 1
                rng = np.random.default_rng(self._seed + self.lap)
                self._order = self._pool.take(rng.permutation(len(self._pool)))
                self._next = 0
            hi = min(len(self._order), self._next + n)
            k, v = to_payloads(self._order, self._next, hi, f"{self._tag}-{self.lap}-{stamp_ms}",
                               stamp_ms / 1000.0)
            keys += k
            values += v
            n -= hi - self._next
            self._next = hi
        return keys, values


class PacedProducer:
    """A thread producing `PoolCycle` records at `rate_per_s` for `seconds`, in ticks
    (whatever fell due since the last tick, stamped once); counts what was handed over
    (`produced`) and what the broker refused (`failed`)."""

    def __init__(self, env: Env, topic: str, cycle: PoolCycle, rate_per_s: float,
                 seconds: float) -> None:
        self.produced = 0
        self.failed = 0
        self.seconds = 0.0
        self._producer = Producer({**env.client_conf, "linger.ms": 5, "acks": "all",
                                   "enable.idempotence": True})
        self._topic, self._cycle = topic, cycle
        self._rate, self._duration = rate_per_s, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-producer", daemon=True)
        self._thread.start()

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.failed += 1

    def _run(self) -> None:
        start = time.monotonic()
        cap = max(1, int(self._rate * 0.05))  # one stamp covers at most 50 ms of records
        while not self._stop.is_set():
            elapsed = time.monotonic() - start
            if elapsed >= self._duration:
                break
            due = min(cap, int(self._rate * elapsed) - self.produced)
            if due <= 0:
                self._producer.poll(0)
                time.sleep(TICK_S)
                continue
            keys, values = self._cycle.take(due, time.time())
            for key, value in zip(keys, values, strict=True):
                self._send(key, value)
            self.produced += due
            self._producer.poll(0)
        left = self._producer.flush(60.0)
        self.failed += left
        self.seconds = time.monotonic() - start

    def _send(self, key: bytes, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(self._topic, value=value, key=key,
                                       on_delivery=self._delivered)
                return
            except BufferError:
                self._producer.poll(0.05)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(90.0)


def harvest(watcher: ScoreWatcher) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Read-back latencies (ms) and key hashes of the scores the watcher saw since the
    last harvest; the harvested keys leave its table, so memory stays bounded over
    millions of records (8 bytes a record kept, for the duplicate count)."""
    seen = watcher.seen.copy()  # atomic under the GIL; the watcher thread keeps adding
    for key in seen:
        watcher.seen.pop(key, None)
    return (np.asarray(readback_latencies(seen), dtype=np.float64),
            np.fromiter((hash(k) for k in seen), dtype=np.int64, count=len(seen)))


def _counters(worker: WorkerProcess) -> WorkerCounters | None:
    try:
        return parse_worker_metrics(worker.metrics_text())
    except OSError:
        return None


def _worker_env(env: Env) -> dict[str, str]:
    return {"RUNG_MODELS__PRIMARY_DIR": str(env.primary_dir),
            "RUNG_MODELS__FALLBACK_DIR": str(env.fallback_dir), "RUNG_LOG__LEVEL": "warning"}


def soak(env: Env, pool: SimData, rate_per_s: float, seconds: float, every_s: float,
         warm_up_s: float) -> dict[str, Any]:
    """Run the soak on fresh topics; `summarize`'s figures plus the raw lag samples."""
    prefix, names = fresh_topics(env, "soak")
    group = f"{prefix}-scorer"
    worker = WorkerProcess(env.bootstrap, env.redis_url, prefix, group=group,
                           env=_worker_env(env))
    watcher: ScoreWatcher | None = None
    sampler: LagSampler | None = None
    producer: PacedProducer | None = None
    samples: list[Sample] = []
    try:
        worker.wait_ready(180.0)
        watcher = ScoreWatcher(env, names.scores)
        sampler = LagSampler(env, names.transactions, group, worker, interval_s=every_s)
        t0 = time.monotonic()
        producer = PacedProducer(env, names.transactions, PoolCycle(pool, prefix), rate_per_s,
                                 seconds)
        answered = 0
        drain_end: float | None = None
        while True:
            time.sleep(max(0.0, t0 + (len(samples) + 1) * every_s - time.monotonic()))
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.proc.returncode}: "
                                   f"{worker.stderr()}")
            lat, keys = harvest(watcher)
            answered += keys.size
            samples.append(Sample(time.monotonic() - t0, rss_kib(worker.proc.pid),
                                  _counters(worker), lat, producer.produced, keys))
            if producer.is_alive():
                continue
            drain_end = drain_end or time.monotonic() + DRAIN_TIMEOUT_S
            if answered >= producer.produced or time.monotonic() >= drain_end:
                break
    finally:
        if producer is not None:
            producer.stop()
        if sampler is not None:
            sampler.stop()
        if watcher is not None:
            watcher.stop()
        try:
            exit_code: int | None = worker.terminate(60.0)
        except subprocess.TimeoutExpired:
            worker.kill()
            exit_code = None
    assert producer is not None and sampler is not None  # the try block ran through
    out = summarize(samples, sampler.samples, warm_up_s=warm_up_s, rate_per_s=rate_per_s,
                    produced=producer.produced, load_end_s=producer.seconds or seconds)
    out.update(seconds=seconds, produce_seconds=round(producer.seconds, 2),
               produced_rate_per_s=producer.produced / producer.seconds
               if producer.seconds else None,
               produce_failures=producer.failed, worker_exit_code=exit_code,
               lag_samples=sampler.samples)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=None,
                   help="records/s (default: 50%% of the realistic healthy maximum)")
    p.add_argument("--every-s", type=float, default=5.0)
    p.add_argument("--warm-up-s", type=float, default=None,
                   help=f"excluded from RSS start and interval p99 (default: a quarter of "
                        f"the run, at most {MAX_WARM_UP_S:.0f} s)")
    p.add_argument("--pool", type=int, default=500_000, help="live events drawn and cycled")
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument("--terminals", type=int, default=10_000)
    p.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    args = p.parse_args(argv)
    from stream_app.logs import configure_logging

    configure_logging("console", "warning")
    seconds = args.minutes * 60.0
    warm_up_s = args.warm_up_s if args.warm_up_s is not None else min(MAX_WARM_UP_S, seconds / 4)
    rate_source: str
    if args.rate:
        rate, rate_source = args.rate, "--rate"
    else:
        found = realistic_max_rate(COMMITTED_RESULTS)
        if found is None:
            p.error(f"no realistic healthy maximum in {COMMITTED_RESULTS}; pass --rate")
        rate, rate_source = LOAD_SHARE * found[0], f"{LOAD_SHARE} x {found[1].name}"
    started = time.time()
    load_avg_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="rung-soak-") as tmp, \
            services(Path(tmp)) as (bootstrap, redis_url, source):
        primary, fallback, models = model_dirs(Path(tmp) / "models")
        env = Env(bootstrap, redis_url, primary, fallback)
        load = realistic_load(env, args.pool, args.customers, args.terminals)
        env = dataclasses.replace(env, load=load)
        result = soak(env, load.live, rate, seconds, args.every_s, warm_up_s)
    deadline_s = BatchSettings().deadline_s
    goals = soak_goals(result, deadline_s)
    plot = plot_series(result["intervals"], args.plot,
                       f"rung soak: {rate:.0f} rec/s for {args.minutes:g} min "
                       f"(warm-up shaded)", warm_up_s)
    result["plot"] = str(plot.relative_to(REPO_ROOT) if plot.is_relative_to(REPO_ROOT) else plot)
    settings = {"minutes": args.minutes, "rate_per_s": rate, "rate_source": rate_source,
                "every_s": args.every_s, "warm_up_s": warm_up_s, "pool": args.pool,
                "load": load.settings, "services": source, "models": models,
                "worker": "rung run (WorkerProcess), default settings",
                "deadline_s": deadline_s, "load_average_1_5_15": {
                    "start": [round(x, 2) for x in load_avg_start],
                    "end": [round(x, 2) for x in os.getloadavg()]},
                "readback": "produce stamp (in the key) -> read_committed poll"}
    path = write_document(result_document("soak", settings, {"soak": result}, goals,
                                          started_at=started))
    for g in goals:
        print(f"{g.name:<52} {g.measured!s:>24} limit {g.limit:<8} met={g.met}")
    print(f"wrote {path} and {plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
