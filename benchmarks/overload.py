"""Overload: offer 120% of the healthy maximum, then 50%, and watch the lag.

    measure_overload(env, max_rate, seconds_over=60, seconds_after=30)

One `rung run` worker (a real process, `stream_app.devstack.process.WorkerProcess`)
with event-time shedding on (`RUNG_BATCH__EVENT_BUDGET_S`, default 1 s here) scores
fresh topics while the load generator produces the small synthetic set
(`benchmarks.e2e.bench_events`) at `over_share` x `max_rate` for `seconds_over`,
then at `after_share` x `max_rate` for `seconds_after`. Once a second a sampler
records the group's lag (end offsets minus the group's committed offsets: what is
really done, not what was fetched) and the worker's shed counter
(`rung_shed_records_total` from its `/metrics`). At the end, every score is read
back with `read_committed`: the share answered as shed (`late`/`overload` first in
its reasons) and the event-to-visible latency (from the input's CreateTime to the
moment a `read_committed` consumer got the score), per phase.

The verdict the issue asks for: lag must stop growing during the overload (the
slope over its second half, records/s, near zero against the excess offered) and
come back to near zero within `seconds_after` (`recovered_after_s`: seconds from
the end of the overload to the first sample with lag below one second of input).

`max_rate` is the healthy maximum measured in the same run (`make bench`'s drain
throughput); this module does not measure it.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.e2e import Env, ScoreWatcher, bench_events, fresh_topics
from benchmarks.report import latency_summary_ms
from stream_app.devstack.process import WorkerProcess
from stream_app.devstack.produce import produce_events
from stream_app.kafka.readback import read_topic
from topics.codec import decode_score

SHED_REASONS = ("late", "overload")


class LagSampler:
    """Once per `interval_s`: group lag from committed offsets, and the shed counter."""

    def __init__(self, env: Env, topic: str, group: str, worker: WorkerProcess,
                 interval_s: float = 1.0) -> None:
        self.samples: list[dict[str, Any]] = []
        self._tps = [TopicPartition(topic, p) for p in range(env.partitions)]
        self._consumer = Consumer({**env.client_conf, "group.id": group,
                                   "enable.auto.commit": False})  # never subscribes: no join
        self._worker = worker
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="lag-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self._interval_s):
                self.samples.append(self.sample())
        finally:
            self._consumer.close()

    def sample(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t_s": round(time.monotonic() - self._t0, 2)}
        try:
            committed = self._consumer.committed(self._tps, timeout=5.0)
            lag = 0
            for tp in committed:
                _low, high = self._consumer.get_watermark_offsets(tp, timeout=5.0)
                lag += max(0, high - max(tp.offset, 0))
            out["lag"] = lag
        except KafkaException as exc:
            out["error"] = str(exc)
        out["shed"] = shed_counter(self._worker)
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def shed_counter(worker: WorkerProcess) -> dict[str, float]:
    """`rung_shed_records_total` by reason, from the worker's /metrics ({} if unreachable)."""
    try:
        text = worker.metrics_text()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "rung_shed_records":
            for s in family.samples:
                if s.name.endswith("_total"):
                    out[s.labels["reason"]] = s.value
    return out


def lag_slope(samples: list[dict[str, Any]], t_from: float, t_to: float) -> float | None:
    """Least-squares slope of lag (records/s) over samples in [t_from, t_to]."""
    pts = [(s["t_s"], s["lag"]) for s in samples if "lag" in s and t_from <= s["t_s"] <= t_to]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx = sum(t for t, _ in pts) / n
    my = sum(v for _, v in pts) / n
    var = sum((t - mx) ** 2 for t, _ in pts)
    return None if var == 0 else sum((t - mx) * (v - my) for t, v in pts) / var


def _worker_env(env: Env, event_budget_s: float) -> dict[str, str]:
    out = {"RUNG_BATCH__EVENT_BUDGET_S": str(event_budget_s),
           "RUNG_MODELS__PRIMARY_DIR": str(env.primary_dir),
           "RUNG_MODELS__FALLBACK_DIR": str(env.fallback_dir)}
    out.update({f"RUNG_BATCH__{k.upper()}": str(v) for k, v in env.batch.items()})
    return out


def measure_overload(env: Env, max_rate: float, seconds_over: float = 60.0,
                     seconds_after: float = 30.0, *, event_budget_s: float = 1.0,
                     over_share: float = 1.2, after_share: float = 0.5) -> dict[str, Any]:
    """Offer `over_share` x `max_rate` for `seconds_over`, then `after_share` x `max_rate`
    for `seconds_after`; lag over time, p99 latency per phase and the shed share."""
    prefix, names = fresh_topics(env, "overload")
    group = f"{prefix}-scorer"
    n_over = int(max_rate * over_share * seconds_over)
    n_after = int(max_rate * after_share * seconds_after)
    worker = WorkerProcess(env.bootstrap, env.redis_url, prefix, group=group,
                           env=_worker_env(env, event_budget_s))
    watcher: ScoreWatcher | None = None
    sampler: LagSampler | None = None
    try:
        worker.wait_ready(120.0)
        watcher = ScoreWatcher(env, names.scores)
        sampler = LagSampler(env, names.transactions, group, worker)
        t_start = time.monotonic()
        over = produce_events(env.client_conf, names.transactions,
                              bench_events(n_over, f"{prefix}-o"),
                              rate_per_s=max_rate * over_share, max_events=n_over)
        t_over_end = time.monotonic() - t_start
        after = produce_events(env.client_conf, names.transactions,
                               bench_events(n_after, f"{prefix}-a"),
                               rate_per_s=max_rate * after_share, max_events=n_after)
        t_after_end = time.monotonic() - t_start
        watcher.wait_for(n_over + n_after, max(30.0, seconds_after))
        sampler.stop()
        final_shed = shed_counter(worker)
    finally:
        if sampler is not None:
            sampler.stop()
        if watcher is not None:
            watcher.stop()
        worker.terminate()
    samples = sampler.samples
    inputs = {r.key: r.timestamp_ms for r in read_topic(env.client_conf, names.transactions)
              if r.key is not None}
    phase_of = {k: ("over" if k.startswith(f"{prefix}-o".encode()) else "after") for k in inputs}
    shed_by_phase = {"over": 0, "after": 0}
    scores = read_topic(env.client_conf, names.scores)
    for r in scores:
        reasons = decode_score(r.value or b"").reasons
        if r.key in phase_of and reasons and reasons[0] in SHED_REASONS:
            shed_by_phase[phase_of[r.key]] += 1
    visible: dict[str, list[float]] = {"over": [], "after": []}
    for key, seen_ms in watcher.seen.items():
        if key in inputs:
            visible[phase_of[key]].append(seen_ms - inputs[key])
    threshold = max_rate * after_share  # one second of input at the lower rate
    recovered = next((s["t_s"] - t_over_end for s in samples
                      if s["t_s"] >= t_over_end and s.get("lag", threshold) < threshold), None)
    slope = lag_slope(samples, t_over_end / 2, t_over_end)
    excess = max_rate * (over_share - 1.0)
    return {
        "max_rate_per_s": max_rate, "event_budget_s": event_budget_s,
        "phases": {
            "over": {"target_rate_per_s": max_rate * over_share, "seconds": seconds_over,
                     "produced": over.sent, "produced_rate_per_s": over.sent / over.seconds,
                     "event_to_visible": latency_summary_ms(visible["over"]),
                     "shed_share": shed_by_phase["over"] / max(1, over.sent),
                     "lag_slope_second_half_per_s": slope,
                     "offered_excess_per_s": excess},
            "after": {"target_rate_per_s": max_rate * after_share, "seconds": seconds_after,
                      "produced": after.sent, "produced_rate_per_s": after.sent / after.seconds,
                      "event_to_visible": latency_summary_ms(visible["after"]),
                      "shed_share": shed_by_phase["after"] / max(1, after.sent)},
        },
        "scores": len(scores), "answered_visible": len(watcher.seen),
        "shed_total_by_reason": final_shed,
        "lag_stopped_growing": slope is not None and slope < 0.1 * excess,
        "recovered_after_s": recovered,
        "recovered_within_s": recovered is not None and recovered <= seconds_after,
        "over_end_s": round(t_over_end, 2), "after_end_s": round(t_after_end, 2),
        "lag_samples": samples,
    }


def main() -> None:
    """A short smoke run: python -m benchmarks.overload [max_rate] [seconds_over] [seconds_after]
    (against KAFKA_BOOTSTRAP_SERVERS/REDIS_URL when set, else a local stack)."""
    import sys
    import tempfile
    from pathlib import Path

    from benchmarks.run import services

    rate = float(sys.argv[1]) if len(sys.argv) > 1 else 3000.0
    over = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    after = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    arts = Path(__file__).resolve().parents[1] / "scorers" / "artifacts"
    with tempfile.TemporaryDirectory() as tmp, \
            services(Path(tmp)) as (bootstrap, redis_url, _where):
        env = Env(bootstrap, redis_url, arts / "primary", arts / "fallback")
        result = measure_overload(env, rate, over, after)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
