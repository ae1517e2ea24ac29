"""`make bench-soak` / `python -m benchmarks.soak`: a worker's RSS at 50% load.

One healthy worker process; records produced at a steady rate (half of the
healthy throughput from the latest `make bench`, or `--rate`) for
`--minutes` (>= 10 for the goal); VmRSS read from /proc/<pid>/status every
`--every-s`. Growth = end / first-sample-after-warm-up − 1.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.e2e import Env, WorkerProc, bench_events, fresh_topics
from benchmarks.models import model_dirs
from benchmarks.report import RESULTS_DIR, result_document, rss_kib, write_document
from benchmarks.run import services
from stream_app.devstack.produce import produce_events

WARM_UP_S = 30.0


def default_rate(results_dir: Path = RESULTS_DIR, fallback: float = 1000.0) -> float:
    """Half of the healthy throughput in the latest bench result, else `fallback`."""
    try:
        doc = json.loads((results_dir / "bench-latest.json").read_text())
        return 0.5 * float(doc["results"]["throughput"]["healthy"]["records_per_s"])
    except (OSError, KeyError, TypeError, ValueError):
        return fallback


def rss_summary(samples: Sequence[tuple[float, int]], warm_up_s: float) -> dict[str, Any]:
    """Peak, start (first sample after warm-up), end and growth of (t_s, rss_kib) samples."""
    if not samples:
        return {"error": "no RSS samples"}
    after = [s for s in samples if s[0] >= warm_up_s] or list(samples)
    start, end = after[0][1], samples[-1][1]
    return {"peak_rss_kib": max(r for _, r in samples), "start_rss_kib": start,
            "end_rss_kib": end, "rss_growth_ratio": end / start - 1.0 if start else None,
            "samples": len(samples)}


def soak(env: Env, rate_per_s: float, seconds: float, every_s: float) -> dict[str, Any]:
    prefix, names = fresh_topics(env, "soak")
    n = int(rate_per_s * seconds)
    worker = WorkerProc(env, "healthy", prefix, n, timeout_s=seconds + 600)
    samples: list[tuple[float, int]] = []
    try:
        worker.wait_event("assigned", 120.0)
        producer = threading.Thread(target=produce_events, args=(
            env.client_conf, names.transactions, bench_events(n, prefix)),
            kwargs={"rate_per_s": rate_per_s, "max_events": n}, daemon=True)
        t0 = time.monotonic()
        producer.start()
        while producer.is_alive():
            rss = rss_kib(worker.proc.pid)
            if rss is None:
                break
            samples.append((time.monotonic() - t0, rss))
            producer.join(every_s)
        done = worker.wait_event("done", 600.0)
    finally:
        worker.finish()
    out = rss_summary(samples, WARM_UP_S)
    out.update(rate_per_s=rate_per_s, seconds=seconds, records=done["records"],
               rss_series_kib=samples[:: max(1, len(samples) // 120)])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=None, help="records/s (default: 50%% load)")
    p.add_argument("--every-s", type=float, default=5.0)
    args = p.parse_args(argv)
    from stream_app.logs import configure_logging

    configure_logging("console", "warning")
    rate = args.rate or default_rate()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="rung-soak-") as tmp, \
            services(Path(tmp)) as (bootstrap, redis_url, source):
        primary, fallback, models = model_dirs(Path(tmp) / "models")
        env = Env(bootstrap, redis_url, primary, fallback)
        result = soak(env, rate, args.minutes * 60.0, args.every_s)
    settings = {"minutes": args.minutes, "rate_per_s": rate, "every_s": args.every_s,
                "warm_up_s": WARM_UP_S, "services": source, "models": models}
    path = write_document(result_document("soak", settings, {"soak": result}, started_at=started))
    print(f"peak RSS {result.get('peak_rss_kib')} KiB, start {result.get('start_rss_kib')} KiB, "
          f"end {result.get('end_rss_kib')} KiB, growth {result.get('rss_growth_ratio')}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
