"""Redis feature store: batch fetch latency and warm-up rate, old hash layout vs the rings.

Both layouts run against the same redis-server in the same run (`REDIS_URL`, else a
private `redis-server` on a free port), warmed with the same simulated history.
- old: the previous layout (one hash per entity, one field per day and counter,
  a pipelined HMGET per distinct entity-day), kept here only as the baseline;
- new: `scorers.feature_store.RedisFeatureStore` (one ring string per entity, MGET).
Fetch latency: p50/p99 over consecutive live-day batches of 64/512/2048 events, with
redis-py's pure-Python reply parser and, when the `hiredis` package is importable,
with hiredis; every fetched matrix of the two layouts is checked equal. Warm-up: events per
second of the old per-batch `update` + `record_labels` vs `bulk_load`. Update
latency per 512 batch too. Goal: new fetch p50 < 5 ms at 512.

    .venv/bin/python -m benchmarks.feature_store [--customers 3000] [--batches 100]
Writes benchmarks/results/feature_store.json and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import redis

from benchmarks.report import Goal, check_document, latency_summary_ms, result_document
from scorers.feature_store import BucketFeatureStore, Increment, RedisFeatureStore, Request
from scorers.lab.sim.demo import LabelledStream, demo_stream
from topics.schemas import Transaction

OUT = Path(__file__).parent / "results" / "feature_store.json"
SIZES = (64, 512, 2048)
T = TypeVar("T")
FETCH_TIMEOUT_S = 5.0  # generous: a timeout here would drop a sample, not measure it


class OldHashBackend:
    """The previous Redis backend (pipelined HMGET / HINCRBY), for the baseline only."""

    def __init__(self, client: redis.Redis, ttl_s: int = 45 * 86_400) -> None:
        self._client, self._ttl_s = client, ttl_s

    def _round_trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        if not commands:
            return []
        conn: Any = self._client.connection_pool.get_connection()
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            return [conn.read_response(timeout=FETCH_TIMEOUT_S) for _ in commands]
        except BaseException:
            conn.disconnect()
            raise
        finally:
            self._client.connection_pool.release(conn)

    def read_many(self, requests: Sequence[Request], timeout_s: float) -> list[list[int]]:
        replies = self._round_trip([("HMGET", key, *fields) for key, fields in requests])
        return [[0 if v is None else int(v) for v in reply] for reply in replies]

    def incr_many(self, increments: Sequence[Increment], timeout_s: float) -> None:
        commands: list[tuple[Any, ...]] = [("HINCRBY", k, f, by) for k, f, by in increments]
        commands += [("EXPIRE", k, self._ttl_s) for k in sorted({k for k, _, _ in increments})]
        self._round_trip(commands)


@contextlib.contextmanager
def redis_url() -> Iterator[tuple[str, str]]:
    """(url, "env" | "private redis-server")."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"], "env"
        return
    if shutil.which("redis-server") is None:
        raise SystemExit("set REDIS_URL or install redis-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "",
                                 "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port, socket_connect_timeout=1.0)
            for _ in range(200):
                with contextlib.suppress(redis.ConnectionError):
                    client.ping()
                    break
                time.sleep(0.05)
            client.close()
            yield f"redis://127.0.0.1:{port}/0", "private redis-server"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def warm_old(store: BucketFeatureStore, history: LabelledStream, batch: int = 2000) -> float:
    """Seconds to fold `history` in per batch (what `warm_feature_store` used to do)."""
    t0 = time.perf_counter()
    txs = history.transactions
    for lo in range(0, len(txs), batch):
        store.update(txs[lo:lo + batch], 60.0)
        store.record_labels(txs[lo:lo + batch], history.is_fraud[lo:lo + batch], 60.0)
    return time.perf_counter() - t0


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """fn's result and the milliseconds it took."""
    t0 = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - t0) * 1e3


def fetch_latencies(old: BucketFeatureStore, new: RedisFeatureStore,
                    live: Sequence[Transaction], size: int,
                    n_batches: int) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Interleaved fetches of the same batches from both layouts, results checked equal."""
    starts = np.linspace(0, len(live) - size, n_batches).astype(int)
    old_ms, new_ms, distinct = [], [], []
    for lo in starts.tolist():
        batch = live[lo:lo + size]
        (old_features, _), ms = timed(partial(old.fetch, batch, FETCH_TIMEOUT_S))
        old_ms.append(ms)
        (new_features, _), ms = timed(partial(new.fetch, batch, FETCH_TIMEOUT_S))
        new_ms.append(ms)
        if not np.array_equal(old_features, new_features):
            raise AssertionError(f"layouts disagree on the batch at {lo} (size {size})")
        distinct.append(len({t.customer_id for t in batch}) + len({t.terminal_id for t in batch}))
    return latency_summary_ms(old_ms), latency_summary_ms(new_ms), float(np.mean(distinct))


def update_latencies(old: BucketFeatureStore, new: RedisFeatureStore,
                     live: Sequence[Transaction], size: int) -> dict[str, dict[str, Any]]:
    old_ms, new_ms = [], []
    for lo in range(0, len(live) - size + 1, size):
        batch = live[lo:lo + size]
        old_ms.append(timed(partial(old.update, batch, FETCH_TIMEOUT_S))[1])
        new_ms.append(timed(partial(new.update, batch, FETCH_TIMEOUT_S))[1])
    return {"old": latency_summary_ms(old_ms), "new": latency_summary_ms(new_ms)}


def clients(url: str) -> dict[str, redis.Redis]:
    """One client per available reply parser: redis-py's pure Python one, and hiredis
    (C) when installed (`pip install hiredis`; redis-py then uses it by default)."""
    from redis._parsers import _HiredisParser, _RESP2Parser
    from redis.utils import HIREDIS_AVAILABLE

    parsers: dict[str, Any] = {"python": _RESP2Parser}
    if HIREDIS_AVAILABLE:
        parsers["hiredis"] = _HiredisParser
    return {name: redis.Redis(connection_pool=redis.ConnectionPool.from_url(
        url, parser_class=parser, socket_timeout=60.0, socket_connect_timeout=2.0))
            for name, parser in parsers.items()}


def run(url: str, customers: int, n_batches: int) -> dict[str, Any]:
    history, live_stream = demo_stream(seed=11, n_customers=customers, now_s=1.75e9)
    live = live_stream.transactions
    by_parser = clients(url)
    client = by_parser["python"]
    client.flushdb()
    old = BucketFeatureStore(OldHashBackend(client), prefix="bench:old")
    new = RedisFeatureStore(client, prefix="bench:new")
    old_warm_s = warm_old(old, history)
    t0 = time.perf_counter()
    new.bulk_load(history.transactions, history.is_fraud, 60.0)
    new_warm_s = time.perf_counter() - t0
    fetch: dict[str, Any] = {}
    for parser, c in by_parser.items():
        for size in SIZES:
            o, n, distinct = fetch_latencies(
                BucketFeatureStore(OldHashBackend(c), prefix="bench:old"),
                RedisFeatureStore(c, prefix="bench:new"), live, size,
                n_batches if size < 2048 else max(n_batches // 4, 10))
            fetch[f"{parser}/{size}"] = {"parser": parser, "batch": size, "old": o, "new": n,
                                         "distinct_entities_mean": distinct,
                                         "speedup_p50": o["p50_ms"] / n["p50_ms"]}
    return {"history_events": len(history), "live_events": len(live),
            "warm": {"old_s": old_warm_s, "new_bulk_load_s": new_warm_s,
                     "old_events_per_s": len(history) / old_warm_s,
                     "new_events_per_s": len(history) / new_warm_s},
            "fetch": fetch, "update_512": update_latencies(old, new, live, 512)}


def print_table(results: dict[str, Any]) -> None:
    print(f"{'parser':>8} {'batch':>6} {'entities':>9} {'old p50':>9} {'old p99':>9} "
          f"{'new p50':>9} {'new p99':>9} {'x p50':>7}   (ms)")
    for r in results["fetch"].values():
        print(f"{r['parser']:>8} {r['batch']:>6} {r['distinct_entities_mean']:>9.0f} "
              f"{r['old']['p50_ms']:>9.2f} {r['old']['p99_ms']:>9.2f} {r['new']['p50_ms']:>9.2f} "
              f"{r['new']['p99_ms']:>9.2f} {r['speedup_p50']:>7.1f}")
    u, w = results["update_512"], results["warm"]
    print(f"update 512 (python parser): old p50 {u['old']['p50_ms']:.2f} ms, "
          f"new p50 {u['new']['p50_ms']:.2f} ms")
    print(f"warm-up of {results['history_events']} events: old {w['old_s']:.1f} s "
          f"({w['old_events_per_s']:.0f}/s), bulk_load {w['new_bulk_load_s']:.2f} s "
          f"({w['new_events_per_s']:.0f}/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--batches", type=int, default=100,
                        help="fetches per batch size (a quarter of that at 2048)")
    args = parser.parse_args()
    started, load_before = time.time(), os.getloadavg()[0]
    with redis_url() as (url, source):
        results = run(url, args.customers, args.batches)
    results["load_average_1m"] = {"before": load_before, "after": os.getloadavg()[0]}
    goals = [Goal(f"fetch_p50_ms_at_512_{r['parser']}", r["new"]["p50_ms"], 5.0, False)
             for r in results["fetch"].values() if r["batch"] == 512]
    from redis.utils import HIREDIS_AVAILABLE

    settings = {"customers": args.customers, "batches": args.batches, "redis": source,
                "hiredis_installed": HIREDIS_AVAILABLE,  # also packs redis-py's commands
                "redis_py": redis.__version__}
    doc = result_document("feature_store", settings,
                          results, goals, started_at=started)
    check_document(doc)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print_table(results)
    for goal in goals:
        print(f"goal {goal.name} <= {goal.limit}: {goal.measured:.2f} "
              f"({'met' if goal.met else 'MISSED'})")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
