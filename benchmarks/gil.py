"""The GIL switch interval: what a busy background thread does to a feature fetch, and
what the worker's shorter interval costs in throughput (`stream_app/live/gil.py`).

1. Fetch beside a busy thread (in this process, real redis-server): the real
   `RedisFeatureStore.fetch` of 512-event live batches (simulated history bulk-loaded
   first, as `benchmarks/feature_store.py` does), timed alone and while one other
   thread decodes label records in a loop (what the label feed does with a backlog),
   at CPython's default switch interval (the baseline) and at rung's default.
2. Throughput (`make bench` only, needs the stack): healthy drains with the worker at
   CPython's default interval and at rung's, alternating, the median of each.

    .venv/bin/python -m benchmarks.gil [--batches 200]   # part 1 only
Writes benchmarks/results/gil-<time>.json and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from benchmarks.report import latency_summary_ms, ratio, result_document, write_document
from stream_app.config import ProcessSettings
from stream_app.live.gil import CPYTHON_DEFAULT_S
from topics.codec import decode_label, encode_label
from topics.schemas import Label, LabelKind

RUNG_DEFAULT_S = ProcessSettings().gil_switch_interval_s
BATCH = 512
FETCH_TIMEOUT_S = 5.0  # generous: a sample must be measured, not dropped


@contextlib.contextmanager
def busy_thread() -> Iterator[list[int]]:
    """A thread decoding label records until the block ends; yields its decode count."""
    payloads = [encode_label(Label(f"tx{i}", LabelKind.FRAUD, 1.75e9 + i, f"t{i % 997}",
                                   1.75e9 + i - 86_400.0)) for i in range(1000)]
    done, stop = [0], threading.Event()

    def spin() -> None:
        while not stop.is_set():
            for p in payloads:
                decode_label(p)
            done[0] += len(payloads)

    t = threading.Thread(target=spin, name="bench-busy", daemon=True)
    t.start()
    try:
        yield done
    finally:
        stop.set()
        t.join(5.0)


def fetch_beside_busy_thread(url: str, customers: int, batches: int) -> dict[str, Any]:
    import redis

    from scorers.feature_store import RedisFeatureStore
    from scorers.lab.sim.demo import demo_stream

    history, live_stream = demo_stream(seed=11, n_customers=customers, now_s=1.75e9)
    live = live_stream.transactions
    client = redis.Redis.from_url(url)
    store = RedisFeatureStore(client, prefix="bench:gil")
    store.bulk_load(history.transactions, history.is_fraud, 60.0)
    chunks = [live[i:i + BATCH] for i in range(0, len(live) - BATCH + 1, BATCH)]
    before = sys.getswitchinterval()
    out: dict[str, Any] = {"batch": BATCH, "customers": customers, "batches": batches}
    try:
        for interval in (CPYTHON_DEFAULT_S, RUNG_DEFAULT_S):
            sys.setswitchinterval(interval)
            for busy in (False, True):
                times: list[float] = []
                with busy_thread() if busy else contextlib.nullcontext([0]) as decoded:
                    for i in range(batches):
                        txs = chunks[i % len(chunks)]
                        t0 = time.perf_counter()
                        store.fetch(txs, FETCH_TIMEOUT_S)
                        times.append((time.perf_counter() - t0) * 1000.0)
                        time.sleep(0.002)  # a loop does other work between fetches
                key = f"interval_{interval * 1000:g}ms/{'busy' if busy else 'alone'}"
                out[key] = {**latency_summary_ms(times), "switch_interval_s": interval,
                            "busy_thread": busy, "labels_decoded_beside": decoded[0],
                            "over_40ms": sum(1 for t in times if t > 40.0)}
    finally:
        sys.setswitchinterval(before)
        client.close()
    base = out[f"interval_{CPYTHON_DEFAULT_S * 1000:g}ms/busy"]["p99_ms"]
    rung = out[f"interval_{RUNG_DEFAULT_S * 1000:g}ms/busy"]["p99_ms"]
    out["busy_p99_rung_over_cpython_default"] = ratio(rung, base)
    return out


def drain_cost(env: Any, records: int, rounds: int) -> dict[str, Any]:
    """Healthy drains at CPython's default interval and at rung's, alternating."""
    from benchmarks.e2e import drain

    name = "RUNG_PROCESS__GIL_SWITCH_INTERVAL_S"
    runs: dict[str, list[float]] = {"cpython_default": [], "rung_default": []}
    saved = os.environ.get(name)
    try:
        for r in range(rounds):
            order = ("cpython_default", "rung_default")
            for which in order if r % 2 == 0 else order[::-1]:
                os.environ[name] = str(CPYTHON_DEFAULT_S if which == "cpython_default"
                                       else RUNG_DEFAULT_S)
                runs[which].append(float(drain(env, "healthy", records)["records_per_s"]))
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved
    med = {k: sorted(v)[(len(v) - 1) // 2] for k, v in runs.items()}
    return {"records": records, "rounds": rounds, "runs_records_per_s": runs,
            "median_records_per_s": med,
            "rung_over_cpython_default": ratio(med["rung_default"], med["cpython_default"])}


def measure_gil(env: Any, records: int, rounds: int = 3, batches: int = 200,
                customers: int = 3000) -> dict[str, Any]:
    out: dict[str, Any] = {"switch_interval_s": {"cpython_default": CPYTHON_DEFAULT_S,
                                                 "rung_default": RUNG_DEFAULT_S}}
    try:
        out["fetch"] = fetch_beside_busy_thread(env.redis_url, customers, batches)
    except Exception as exc:  # noqa: BLE001 - reported, not fatal to the bench
        out["fetch"] = {"error": str(exc)[-1500:]}
    try:
        out["drain"] = drain_cost(env, records, rounds)
    except Exception as exc:  # noqa: BLE001
        out["drain"] = {"error": str(exc)[-1500:]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--customers", type=int, default=3000)
    args = p.parse_args(argv)
    from benchmarks.feature_store import redis_url

    with redis_url() as (url, source):
        fetch = fetch_beside_busy_thread(url, args.customers, args.batches)
    doc = result_document("gil", {"batches": args.batches, "customers": args.customers,
                                  "redis": source}, {"fetch": fetch})
    path = write_document(doc)
    for key, row in fetch.items():
        if isinstance(row, dict):
            print(f"{key:32} p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  "
                  f"max {row['max_ms']:6.2f} ms  >40ms {row['over_40ms']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
