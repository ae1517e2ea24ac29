"""The shadow's cost measured inside one worker run: on and off in alternating windows.

Why: separate runs of the same worker on this 2-core machine differ by ±15-20% from one
run to the next (the machine's speed drifts over minutes), so `benchmarks.shadow`'s
off/on runs cannot resolve the issue's 5%. Here one worker, with the challenger
configured, runs the whole time and a thread in its process pauses and resumes the
shadow (`Shadow.pause` / `resume`: paused, each committed batch is dropped with reason
`paused` and the child idles) every `window_s` seconds. Slow drift of the machine then
hits both sides alike, and each "on" window is compared with the "off" windows on
either side of it.

- `latency`: records produced at a fixed rate (no backlog: the shadow mirrors every
  record while on); each record's read-back latency (input CreateTime to the moment a
  `read_committed` consumer got its score, as `benchmarks.e2e`) belongs to the window
  its CreateTime falls in; the first `settle_s` of each window are left out (what the
  previous window queued is still in flight), and so are the first `skip_s` of the
  measured records (after `benchmarks.e2e`'s warm-up load: the child's start).
  Reported: p50/p99 of all "on" and all "off" records, their ratio with a 95% interval
  from resampling (on, off) window pairs, and the median of each pair's p99 ratio
  (less swayed by one slow window).
- `throughput`: a backlog drained with the full mirror (`pause_in_backlog=false`: the
  shipped setting stands aside in a backlog, see `benchmarks.shadow`); a window's rate
  is the records committed in it over its length, and each "on" window's rate is
  divided by the mean of its neighbours' (linear drift cancels). Reported: the median
  of those ratios and a 95% interval from resampling them.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import latency_summary_ms, ratio
from benchmarks.shadow import GOAL_RATIO

BOOTSTRAP_DRAWS = 2000
SEED = 20261202


# ---- in the worker process ---------------------------------------------------------------
def toggle_shadow(worker: Any, window_s: float, stop: threading.Event) -> list[dict[str, Any]]:
    """Start a thread that resumes/pauses `worker`'s shadow every `window_s` (on first);
    the list it fills holds each window's start: monotonic and wall time, state, and the
    records the worker had committed by then."""
    toggles: list[dict[str, Any]] = []

    def run() -> None:
        for k in itertools.count():
            paused = k % 2 == 1
            shadow = worker._shadow  # noqa: SLF001 - the benchmark's own worker
            (shadow.pause if paused else shadow.resume)()
            toggles.append({"t": time.monotonic(), "wall": time.time(), "paused": paused,
                            "records": worker.records_committed})
            if stop.wait(window_s):
                return

    threading.Thread(target=run, name="bench-shadow-toggle", daemon=True).start()
    return toggles


# ---- statistics ----------------------------------------------------------------------------
def windows(toggles: Sequence[dict[str, Any]], end: float) -> list[tuple[float, float, bool]]:
    """(start, end, paused) per window, in wall time; the last one ends at `end`."""
    starts = [float(t["wall"]) for t in toggles]
    return [(s, e, bool(t["paused"]))
            for s, e, t in zip(starts, [*starts[1:], end], toggles, strict=True) if e > s]


def _p99(values: Sequence[float] | np.ndarray) -> float | None:
    """As `latency_summary_ms`'s p99 (linear interpolation, numpy's default); None under
    100 values. numpy's selection, not a sort: a bootstrap draw of a 20-minute run pools
    millions of latencies, two thousand times."""
    return float(np.percentile(values, 99)) if len(values) >= 100 else None


def _interval(draw: Callable[[random.Random], float | None]) -> list[float] | None:
    rng = random.Random(SEED)
    got = sorted(x for x in (draw(rng) for _ in range(BOOTSTRAP_DRAWS)) if x is not None)
    if len(got) < BOOTSTRAP_DRAWS // 2:
        return None
    return [round(got[int(0.025 * len(got))], 4), round(got[int(0.975 * len(got)) - 1], 4)]


def latency_by_window(created_ms: Sequence[float], latency_ms: Sequence[float],
                      wins: Sequence[tuple[float, float, bool]], settle_s: float,
                      skip_s: float = 0.0) -> dict[str, Any]:
    """Pool the records' latencies by window state (created within a window, past its
    first `settle_s`, and `skip_s` or more after the first record: the worker's own
    warm-up); the p99 ratio on/off, and its interval over (on, off) pairs."""
    per_window: list[list[float]] = [[] for _ in wins]
    starts = [w[0] for w in wins]
    first_s = min(created_ms, default=0.0) / 1000.0
    for created, lat in zip(created_ms, latency_ms, strict=True):
        t = created / 1000.0
        i = bisect.bisect_right(starts, t) - 1  # the window holding t, -1 before all
        if i >= 0 and wins[i][0] + settle_s <= t < wins[i][1] and t >= first_s + skip_s:
            per_window[i].append(lat)
    on = [v for w, vs in zip(wins, per_window, strict=True) if not w[2] for v in vs]
    off = [v for w, vs in zip(wins, per_window, strict=True) if w[2] for v in vs]
    arrays = [np.asarray(vs, dtype=np.float64) for vs in per_window]
    pairs = [(arrays[i], arrays[i + 1]) for i in range(len(wins) - 1)
             if not wins[i][2] and wins[i + 1][2] and per_window[i] and per_window[i + 1]]

    def draw(rng: random.Random) -> float | None:
        if not pairs:
            return None
        picked = [rng.choice(pairs) for _ in pairs]
        return ratio(_p99(np.concatenate([p[0] for p in picked])),
                     _p99(np.concatenate([p[1] for p in picked])))

    p99_on, p99_off = _p99(on), _p99(off)
    by_pair = [r for a, b in pairs if (r := ratio(_p99(a), _p99(b))) is not None]
    return {"on": latency_summary_ms(on), "off": latency_summary_ms(off),
            "p99_ratio": ratio(p99_on, p99_off), "p99_ratio_interval_95": _interval(draw),
            "pairs": len(pairs),
            "pair_p99_ratio_median": round(statistics.median(by_pair), 4) if by_pair else None,
            "pair_p99_ratios": [round(r, 4) for r in by_pair],
            "windows_p99_ms": [[round(p, 1) if (p := _p99(vs)) else None, w[2]]
                               for w, vs in zip(wins, per_window, strict=True)]}


def throughput_by_window(toggles: Sequence[dict[str, Any]], end_t: float, end_records: int,
                         ) -> dict[str, Any]:
    """Each full window's rate; each "on" window over the mean of its two neighbours."""
    points = [(float(t["t"]), int(t["records"]), bool(t["paused"])) for t in toggles]
    points.append((end_t, end_records, True))
    rates = [((r1 - r0) / (t1 - t0), paused) for (t0, r0, paused), (t1, r1, _) in
             itertools.pairwise(points) if t1 > t0]
    rates = rates[1:-1]  # the first holds assignment and warm-up, the last is partial
    ratios = [rates[i][0] / ((rates[i - 1][0] + rates[i + 1][0]) / 2)
              for i in range(1, len(rates) - 1)
              if not rates[i][1] and rates[i - 1][1] and rates[i + 1][1]
              and rates[i - 1][0] + rates[i + 1][0] > 0]

    def draw(rng: random.Random) -> float | None:
        return statistics.median([rng.choice(ratios) for _ in ratios]) if ratios else None

    return {"ratio_median": round(statistics.median(ratios), 4) if ratios else None,
            "ratio_interval_95": _interval(draw), "ratios": [round(r, 4) for r in ratios],
            "on_records_per_s": [round(r) for r, paused in rates if not paused],
            "off_records_per_s": [round(r) for r, paused in rates if paused]}


# ---- the runs ------------------------------------------------------------------------------
def measure_interleaved(env: Any, shadow_on: dict[str, Any], rate_per_s: float,
                        seconds: float, drain_records: int, window_s: float = 4.0,
                        settle_s: float = 1.0, skip_s: float = 8.0,
                        drain_window_s: float = 2.0) -> dict[str, Any]:
    """Both measurements (see the module docstring) with the challenger `shadow_on`:
    latency windows of `window_s` (the first `skip_s` of the measured records left out),
    drain windows of `drain_window_s` (no drain when `drain_records` is 0)."""
    from benchmarks.e2e import fresh_topics, produce_input
    from benchmarks.shadow import ShadowWorkerProc, paced_run

    out: dict[str, Any] = {"window_s": window_s, "settle_s": settle_s, "skip_s": skip_s,
                           "drain_window_s": drain_window_s}
    # latency at a fixed rate, the full mirror on every "on" window
    run = paced_run(env, shadow_on, rate_per_s, seconds, "shadow-il", toggle_s=window_s)
    keys = list(run.seen_ms)
    out["latency"] = {"target_rate_per_s": rate_per_s, "seconds": seconds,
                      "produced_rate_per_s": run.produced_rate_per_s,
                      **latency_by_window([run.created_ms[k] for k in keys],
                                          [run.seen_ms[k] - run.created_ms[k] for k in keys],
                                          windows(run.stopped["toggles"],
                                                  float(run.done["wall"])),
                                          settle_s, skip_s),
                      "shadow_compared": run.stopped["compared"],
                      "shadow_dropped": run.stopped["dropped"]}
    if drain_records <= 0:
        return out
    # throughput: a backlog, the full mirror on every "on" window
    prefix, names = fresh_topics(env, "shadow-il-drain")
    produce_input(env, names.transactions, drain_records, prefix)
    worker = ShadowWorkerProc(env, {**shadow_on, "pause_in_backlog": False}, prefix,
                              drain_records, toggle_s=drain_window_s)
    try:
        worker.wait_event("assigned", 120.0)
        done = worker.wait_event("done", 300.0)
        stopped = worker.wait_event("stopped", 120.0)
    finally:
        worker.finish()
    out["throughput"] = {"records": drain_records,
                         **throughput_by_window(stopped["toggles"], float(done["t"]),
                                                int(done["records"])),
                         "shadow_compared": stopped["compared"],
                         "shadow_dropped": stopped["dropped"]}
    return out


# ---- alone, longer -------------------------------------------------------------------------
def latency_goal(latency: dict[str, Any], goal_ratio: float = GOAL_RATIO) -> dict[str, Any]:
    """The issue's 5% on p99: `met` by the point estimate, `shown` when the whole 95%
    interval is inside it."""
    limit = 1 / goal_ratio
    p99 = latency.get("p99_ratio")
    high = (latency.get("p99_ratio_interval_95") or [None, None])[1]
    return {"p99_ratio_max": limit, "met": bool(p99 and p99 <= limit),
            "shown": bool(high and high <= limit)}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m benchmarks.shadow_interleaved`: longer interleaved runs than `make
    bench` gives them, one per sample, on one fresh local stack; JSON in
    benchmarks/results (`shadow-interleaved-<time>.json`)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=1200.0, help="latency run per sample")
    p.add_argument("--samples", default="0.1",
                   help="comma-separated shares of records the shadow takes (RUNG_SHADOW__SAMPLE)")
    p.add_argument("--drain-records", type=int, default=400_000,
                   help="backlog drained per sample with the shadow on and off (0: none)")
    p.add_argument("--load", type=float, default=0.5,
                   help="latency run's rate: this share of a no-shadow drain's rate")
    args = p.parse_args(argv)
    from benchmarks.e2e import Env
    from benchmarks.models import model_dirs
    from benchmarks.report import result_document, write_document
    from benchmarks.run import services, warm_broker
    from benchmarks.shadow import challenger_dir
    from benchmarks.shadow import drain as shadow_drain
    from stream_app.logs import configure_logging

    configure_logging("console", "warning")
    samples = [float(x) for x in args.samples.split(",")]
    started, runs = time.time(), []
    with tempfile.TemporaryDirectory(prefix="rung-shadow-il-") as tmp, \
            services(Path(tmp)) as (bootstrap, redis_url, source):
        primary, fallback, models = model_dirs(Path(tmp) / "models")
        env = Env(bootstrap, redis_url, primary, fallback)
        warm = warm_broker(env, 40_000)  # the broker's own warm-up, as `make bench`'s
        base = shadow_drain(env, {"drift": False}, 150_000)["records_per_s"]
        model_dir, version = challenger_dir(env.primary_dir, Path(tmp) / "challenger")
        for sample in samples:
            on = {"model_dir": str(model_dir), "sample": sample, "drift": True,
                  "executor": "process"}
            try:
                got = measure_interleaved(env, on, args.load * base, args.seconds,
                                          args.drain_records)
            except Exception as exc:  # noqa: BLE001 - one failed sample is reported
                runs.append({"sample": sample, "error": str(exc)[-1500:]})
                continue
            runs.append({"sample": sample, **got, "goal": latency_goal(got["latency"])})
            print(json.dumps({"sample": sample, "p99_ratio": got["latency"].get("p99_ratio"),
                              "interval_95": got["latency"].get("p99_ratio_interval_95"),
                              "pairs": got["latency"].get("pairs"),
                              "drain_ratio": got.get("throughput", {}).get("ratio_median")}),
                  flush=True)
    settings = {"seconds": args.seconds, "samples": samples, "load": args.load,
                "drain_records": args.drain_records, "services": source, "models": models,
                "challenger_version": version, "broker_warm_up": warm,
                "no_shadow_drain_records_per_s": base,
                "load_set": "synthetic_events (977 customers, 1,999 terminals)"}
    path = write_document(result_document("shadow-interleaved", settings, {"runs": runs},
                                          started_at=started))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
