"""The pure pieces of the soak benchmark (`benchmarks/soak.py`): no Kafka, no clock.

A soak run collects one `Sample` every few seconds: the worker's RSS, its own
counters from `/metrics` (`WorkerCounters`: scores by tier, degradations by
reason, dead letters, GC pauses), and the read-back latencies of the scores a
`read_committed` consumer saw since the previous sample. `intervals` turns the
cumulative counters into per-interval deltas; `summarize` reduces the run to the
figures the goals read (`soak_goals`); `plot_series` draws the four series.

Latency per record comes from the record's key: the soak producer names each
record `<tag>-<lap>-<stamp_ms>-<row>`, `stamp_ms` being the wall-clock time the
record was encoded and handed to the producer (also its `event_time_s`), so the
harness needs no per-record table over millions of records (`stamp_ms_of`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.overload import lag_slope
from benchmarks.report import Goal, latency_summary_ms, percentile, ratio

RSS_GROWTH_GOAL = 0.10  # end / first sample after warm-up - 1
LAG_GROWTH_GOAL_S = 1.0  # lag trend over the last half, in seconds of input
PRIMARY_SHARE_GOAL = 0.999
READBACK_SLACK_MS = 20.0  # read-back p99 limit: the batch deadline plus this (as `make bench`)


@dataclass(frozen=True, slots=True)
class WorkerCounters:
    """Cumulative counters scraped from one `/metrics` page."""

    scores_by_tier: dict[str, float] = field(default_factory=dict)
    degraded_by_reason: dict[str, float] = field(default_factory=dict)
    dead_letters: float = 0.0
    gc_pauses: float = 0.0  # count, all generations
    gc_pause_s: float = 0.0  # total seconds, all generations

    @property
    def scores(self) -> float:
        return sum(self.scores_by_tier.values())

    def to_dict(self) -> dict[str, Any]:
        return {"scores_by_tier": self.scores_by_tier,
                "degraded_by_reason": self.degraded_by_reason,
                "dead_letters": self.dead_letters, "gc_pauses": self.gc_pauses,
                "gc_pause_s": self.gc_pause_s}


def parse_worker_metrics(text: str) -> WorkerCounters:
    """The soak's counters from a Prometheus text page (labels summed away but the
    tier of `rung_scores_total` and the reason of `rung_degraded_total`)."""
    tiers: dict[str, float] = {}
    reasons: dict[str, float] = {}
    dead = pauses = pause_s = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "rung_scores_total":
                tiers[s.labels["tier"]] = tiers.get(s.labels["tier"], 0.0) + s.value
            elif s.name == "rung_degraded_total":
                reasons[s.labels["reason"]] = reasons.get(s.labels["reason"], 0.0) + s.value
            elif s.name == "rung_dead_letter_total":
                dead += s.value
            elif s.name == "rung_gc_pause_seconds_count":
                pauses += s.value
            elif s.name == "rung_gc_pause_seconds_sum":
                pause_s += s.value
    return WorkerCounters(tiers, reasons, dead, pauses, pause_s)


@dataclass(frozen=True, slots=True)
class Sample:
    """One sampling point; `readback_ms` holds the scores seen since the previous one."""

    t_s: float
    rss_kib: int | None
    counters: WorkerCounters | None  # None: /metrics unreachable this time
    readback_ms: Sequence[float] | npt.NDArray[np.float64] = ()  # an array in a run
    produced: int = 0  # records handed to the producer so far
    answered_keys: Sequence[int] | npt.NDArray[np.int64] = ()  # hashes of the keys seen


def stamp_ms_of(key: bytes) -> float | None:
    """The produce stamp in a soak key `<tag>-<lap>-<stamp_ms>-<row>`; None for others."""
    parts = key.rsplit(b"-", 2)
    if len(parts) != 3:
        return None
    try:
        return float(parts[1])
    except ValueError:
        return None


def readback_latencies(seen: Mapping[bytes, float]) -> list[float]:
    """Read-back latency (ms) of each seen key: when it was seen minus its produce stamp."""
    out = []
    for key, seen_ms in seen.items():
        stamp = stamp_ms_of(key)
        if stamp is not None:
            out.append(seen_ms - stamp)
    return out


def _delta(new: Mapping[str, float], old: Mapping[str, float]) -> dict[str, float]:
    return {k: v - old.get(k, 0.0) for k, v in new.items() if v - old.get(k, 0.0) > 0}


def intervals(samples: Sequence[Sample],
              lag: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """One row per sample after the first: deltas of the worker's counters since the
    previous sample with counters, that interval's read-back latency, the RSS, and the
    lag of the latest `lag` sample (`{"t_s", "lag"}`, same clock) at or before its end."""
    rows: list[dict[str, Any]] = []
    prev = WorkerCounters()
    prev_t = 0.0
    prev_produced = 0
    for s in samples:
        row: dict[str, Any] = {"t_s": round(s.t_s, 2), "rss_kib": s.rss_kib,
                               "readback": latency_summary_ms(list(s.readback_ms))}
        span = s.t_s - prev_t
        row["produced_per_s"] = (s.produced - prev_produced) / span if span > 0 else None
        if s.counters is not None:
            tiers = _delta(s.counters.scores_by_tier, prev.scores_by_tier)
            scored = sum(tiers.values())
            row.update(scored=scored, scored_per_s=scored / span if span > 0 else None,
                       tiers=tiers, primary_share=ratio(tiers.get("primary", 0.0), scored),
                       degraded=_delta(s.counters.degraded_by_reason, prev.degraded_by_reason),
                       dead_letters=s.counters.dead_letters - prev.dead_letters,
                       gc_pauses=s.counters.gc_pauses - prev.gc_pauses,
                       gc_pause_ms=1000.0 * (s.counters.gc_pause_s - prev.gc_pause_s))
            prev = s.counters
        before = [x for x in lag if "lag" in x and x["t_s"] <= s.t_s]
        row["lag"] = before[-1]["lag"] if before else None
        rows.append(row)
        prev_t, prev_produced = s.t_s, s.produced
    return rows


def rss_summary(samples: Sequence[tuple[float, int]], warm_up_s: float) -> dict[str, Any]:
    """Peak, start (first sample after warm-up), end and growth of (t_s, rss_kib) samples."""
    if not samples:
        return {"error": "no RSS samples"}
    after = [s for s in samples if s[0] >= warm_up_s] or list(samples)
    start, end = after[0][1], samples[-1][1]
    return {"peak_rss_kib": max(r for _, r in samples), "start_rss_kib": start,
            "end_rss_kib": end, "rss_growth_ratio": end / start - 1.0 if start else None,
            "samples": len(samples)}


def lag_growth_s(lag: Sequence[Mapping[str, Any]], end_s: float,
                 rate_per_s: float) -> tuple[float | None, float | None]:
    """(slope in records/s over [end_s / 2, end_s], the lag that trend adds over that half
    in seconds of input): bounded lag shows a slope near zero."""
    slope = lag_slope([dict(x) for x in lag], end_s / 2, end_s)
    if slope is None or rate_per_s <= 0:
        return slope, None
    return slope, slope * (end_s / 2) / rate_per_s


def summarize(samples: Sequence[Sample], lag: Sequence[Mapping[str, Any]], *,
              warm_up_s: float, rate_per_s: float, produced: int,
              load_end_s: float | None = None) -> dict[str, Any]:
    """The run in figures: RSS start (first sample after warm-up) / end / growth, lag
    trend over the second half of the load (`load_end_s`, default the last sample: the
    drain after the load would read as a falling trend), primary share overall and after
    warm-up, read-back latency overall and per interval after warm-up, what the worker
    counted, and records answered."""
    rows = intervals(samples, lag)
    out: dict[str, Any] = {"warm_up_s": warm_up_s, "rate_per_s": rate_per_s,
                           "produced": produced}
    out.update(rss_summary([(s.t_s, s.rss_kib) for s in samples if s.rss_kib is not None],
                           warm_up_s))
    out["samples"] = len(samples)
    end_s = load_end_s if load_end_s is not None else samples[-1].t_s if samples else 0.0
    slope, growth = lag_growth_s(lag, end_s, rate_per_s)
    lags = [x["lag"] for x in lag if "lag" in x and x["t_s"] >= warm_up_s]
    out.update(lag_slope_last_half_per_s=slope, lag_growth_last_half_s=growth,
               lag_trend_window_s=[end_s / 2, end_s],
               max_lag_after_warm_up=max(lags) if lags else None)
    last = next((s.counters for s in reversed(samples) if s.counters is not None), None)
    at_warm = next((s.counters for s in reversed(samples)
                    if s.counters is not None and s.t_s <= warm_up_s), WorkerCounters())
    if last is not None:
        out["worker_counters"] = last.to_dict()
        out["primary_share"] = ratio(last.scores_by_tier.get("primary", 0.0), last.scores)
        warm_tiers = _delta(last.scores_by_tier, at_warm.scores_by_tier)
        out["primary_share_after_warm_up"] = ratio(warm_tiers.get("primary", 0.0),
                                                   sum(warm_tiers.values()))
    every = np.concatenate([np.asarray(s.readback_ms, dtype=np.float64) for s in samples]
                           or [np.empty(0)])
    out["readback"] = _latency_summary(every)
    out.update(answer_counts([s.answered_keys for s in samples], produced,
                             last.scores if last is not None else None))
    p99s = [r["readback"]["p99_ms"] for r in rows
            if r["t_s"] >= warm_up_s and r["readback"]["n"] > 0]
    out["readback_worst_interval_p99_ms"] = max(p99s) if p99s else None
    out["readback_median_interval_p99_ms"] = percentile(p99s, 50) if p99s else None
    out["intervals"] = rows
    return out


def _latency_summary(values_ms: npt.NDArray[np.float64]) -> dict[str, Any]:
    """`report.latency_summary_ms` over an array (linear interpolation, as there)."""
    if values_ms.size == 0:
        return latency_summary_ms([])
    p50, p99, p999 = np.percentile(values_ms, [50, 99, 99.9]).tolist()
    return {"n": int(values_ms.size), "p50_ms": p50, "p99_ms": p99, "p999_ms": p999,
            "max_ms": float(values_ms.max())}


def answer_counts(key_hashes: Sequence[Sequence[int] | npt.NDArray[np.int64]], produced: int,
                  worker_scored: float | None) -> dict[str, Any]:
    """Every record answered once: distinct keys the read_committed consumer saw (from
    per-interval key hashes: a repeat within one interval is already dropped by the
    watcher, one across intervals is counted here), those seen twice, those never seen,
    and the worker's committed score count against what was produced."""
    hashes = np.concatenate([np.asarray(h, dtype=np.int64) for h in key_hashes]
                            or [np.empty(0, dtype=np.int64)])
    distinct = int(np.unique(hashes).size)
    return {"answered_visible": distinct, "answered_share": ratio(distinct, produced),
            "duplicates_visible": int(hashes.size) - distinct if hashes.size else None,
            "missing_visible": produced - distinct,
            "worker_scored_minus_produced": (None if worker_scored is None
                                             else worker_scored - produced)}


def soak_goals(summary: Mapping[str, Any], deadline_s: float) -> list[Goal]:
    """The issue's soak goals, from `summarize`'s output."""
    def num(key: str) -> float | None:
        v = summary.get(key)
        return float(v) if isinstance(v, (int, float)) and not math.isnan(v) else None

    p99_limit = deadline_s * 1000.0 + READBACK_SLACK_MS
    return [
        Goal("soak: RSS growth (end/start - 1)", num("rss_growth_ratio"), RSS_GROWTH_GOAL, False),
        Goal("soak: lag growth over the last half (s of input)",
             num("lag_growth_last_half_s"), LAG_GROWTH_GOAL_S, False),
        Goal("soak: primary share overall", num("primary_share"), PRIMARY_SHARE_GOAL, True),
        Goal("soak: read-back p99 ms", _nested(summary, "readback", "p99_ms"), p99_limit, False),
        Goal("soak: worst interval read-back p99 ms",
             num("readback_worst_interval_p99_ms"), p99_limit, False),
        Goal("soak: answered / produced", num("answered_share"), 1.0, True),
        Goal("soak: duplicate scores seen", num("duplicates_visible"), 0.0, False),
    ]


def _nested(summary: Mapping[str, Any], *path: str) -> float | None:
    node: Any = summary
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return float(node) if isinstance(node, (int, float)) and not math.isnan(node) else None


def realistic_max_rate(results_dir: Path) -> tuple[float, Path] | None:
    """The realistic set's healthy maximum (records/s) from the newest `bench-*.json` in
    `results_dir` that measured one, and that file; None when none did."""
    for path in sorted(results_dir.glob("bench-*.json"), reverse=True):
        if path.name == "bench-latest.json":
            continue
        try:
            doc = json.loads(path.read_text())
            rate = doc["results"]["realistic"]["throughput"]["healthy"]["records_per_s"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(rate, (int, float)) and rate > 0:
            return float(rate), path
    return None


def plot_series(rows: Sequence[Mapping[str, Any]], path: Path, title: str,
                warm_up_s: float = 0.0) -> Path:
    """RSS, lag, primary share and read-back p50/p99 per interval over time, as a PNG
    (the warm-up shaded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t_s"] / 60.0 for r in rows]

    def series(get: Any) -> list[float]:
        out = []
        for r in rows:
            v = get(r)
            out.append(float(v) if isinstance(v, (int, float)) else math.nan)
        return out

    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(t, series(lambda r: (r["rss_kib"] or math.nan) / 1024.0))
    axes[0].set_ylabel("worker RSS (MiB)")
    axes[1].plot(t, series(lambda r: r["lag"]))
    axes[1].set_ylabel("group lag (records)")
    axes[2].plot(t, series(lambda r: r.get("primary_share")))
    axes[2].axhline(PRIMARY_SHARE_GOAL, color="grey", linestyle=":", label="goal")
    axes[2].set_ylabel("primary share")
    axes[2].legend(loc="lower right")
    axes[3].plot(t, series(lambda r: r["readback"]["p50_ms"]), label="p50")
    axes[3].plot(t, series(lambda r: r["readback"]["p99_ms"]), label="p99")
    axes[3].set_ylabel("read-back latency (ms)")
    axes[3].set_xlabel("minutes")
    axes[3].legend(loc="upper right")
    for ax in axes:
        ax.grid(alpha=0.3)
        if warm_up_s > 0:
            ax.axvspan(0.0, warm_up_s / 60.0, color="grey", alpha=0.15, linewidth=0)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
