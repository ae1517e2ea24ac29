"""Healthy means primary: the share of records the primary answers with nothing broken.

On a local stack (`LocalStack`, or `KAFKA_BOOTSTRAP_SERVERS` / `REDIS_URL` when set):

1. generate skewed load at realistic cardinality (`scorers.lab.sim.load.generate_load`:
   100,000 customers with Zipf 0.5 activity, 10,000 terminals with Zipf 1.0 popularity)
   and warm the Redis feature store with its history (`warm_from_data`);
2. start one worker process (`rung run`) and wait until it has partitions;
3. steady phase: produce live events at `--rate` for `--seconds`, starting the moment
   the worker is ready (so the first seconds after it joined are measured);
4. drain phase: produce a backlog of `--drain` events at once and time it: the
   worker's maximum at this cardinality, so the steady rate can be stated as a
   fraction of it (the claim is for <= 50 %);
5. read every score back (`read_committed`) and report the primary share overall and
   in the first 10 s after the worker was ready, the degradation reasons among the
   non-primary answers, and the worker's per-batch stage histograms
   (`rung_stage_duration_seconds`: `feature_fetch`, `primary_forward`, ...);
6. time the feature fetch and the primary's forward pass on 512-record batches of the
   same data in this process (the worker stopped), for exact p50/p99/p99.9.

    .venv/bin/python -m benchmarks.primary_share [--rate 2000] [--seconds 30] [--drain 30000]

Writes benchmarks/results/primary_share-<time>.json (and -latest.json) and prints it.
Without `--rate`, half the maximum measured by the previous run (else 2,000/s).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.report import RESULTS_DIR, machine_info, result_document, write_document
from stream_app.config import load_settings
from stream_app.devstack.process import WorkerProcess
from stream_app.devstack.produce import ProduceReport, produce_bulk, produce_events
from stream_app.devstack.stack import LocalStack
from stream_app.kafka.admin import create_rung_topics
from stream_app.kafka.readback import Record, read_topic
from topics.catalog import TopicNames
from topics.codec import decode_score

FIRST_S = 10.0
DEFAULT_RATE = 2000.0
STAGES = ("features", "feature_fetch", "primary", "primary_forward", "fallback", "commit")
COUNTERS = ("rung_breaker_transitions_total", "rung_degraded_total", "rung_deadline_misses_total",
            "rung_internal_errors_total", "rung_batches_total")
_BUCKET = re.compile(r'^rung_stage_duration_seconds_bucket\{(?P<labels>[^}]*)\} (?P<n>\S+)$')


def stage_quantiles(metrics_text: str, qs: Sequence[float] = (0.5, 0.99, 0.999)
                    ) -> dict[str, dict[str, float | int]]:
    """Per stage: the number of batches and the upper bucket bound holding each quantile."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    for line in metrics_text.splitlines():
        m = _BUCKET.match(line)
        if not m:
            continue
        labels = dict(kv.split("=", 1) for kv in m["labels"].split(","))
        stage, bound = labels["stage"].strip('"'), float(labels["le"].strip('"'))
        buckets.setdefault(stage, []).append((bound, float(m["n"])))
    out: dict[str, dict[str, float | int]] = {}
    for stage, rows in buckets.items():
        rows.sort()
        total = rows[-1][1]
        if not total:
            continue
        entry: dict[str, float | int] = {"batches": int(total)}
        for q in qs:
            upper = next(b for b, n in rows if n >= q * total)
            entry[f"p{q * 100:g}_le_ms"] = upper * 1000.0
        out[stage] = entry
    return out


def counters(metrics_text: str) -> dict[str, float]:
    """The worker's counters that explain a degraded answer (non-zero series only)."""
    out = {}
    for line in metrics_text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.split("{")[0] in COUNTERS and float(value):
            out[name] = float(value)
    return out


def share_report(scores: Sequence[Record], input_ms: dict[bytes, int],
                 first_until_ms: float) -> dict[str, Any]:
    """Primary share overall and for inputs produced before `first_until_ms`, and the
    degradation reasons of the non-primary answers."""
    tiers: Counter[str] = Counter()
    first: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for r in scores:
        s = decode_score(r.value or b"{}")
        tiers[s.tier] += 1
        if input_ms.get(r.key or b"", float("inf")) < first_until_ms:
            first[s.tier] += 1
        if s.tier != "primary":
            reasons.update(s.reasons)
    n, n_first = sum(tiers.values()), sum(first.values())
    return {"scores": n, "tiers": dict(tiers),
            "primary_share": tiers["primary"] / n if n else None,
            "first_10s_scores": n_first,
            "first_10s_primary_share": first["primary"] / n_first if n_first else None,
            "reasons": dict(reasons.most_common())}


def _await(conf: dict[str, Any], topic: str, keys: set[bytes], timeout_s: float) -> list[Record]:
    end = time.monotonic() + timeout_s
    while True:
        got = [r for r in read_topic(conf, topic, 30.0) if r.key in keys]
        if len(got) >= len(keys) or time.monotonic() > end:
            return got
        time.sleep(1.0)


def _previous_max() -> float | None:
    try:
        doc = json.loads((RESULTS_DIR / "primary_share-latest.json").read_text())
        return float(doc["results"]["drain"]["records_per_s"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def in_process_timings(redis_url: str, live: Any, batches: int, size: int = 512
                       ) -> dict[str, Any]:
    """Feature fetch and primary forward per `size`-record batch, in this process."""
    import torch

    from scorers.feature_store import RedisFeatureStore
    from scorers.features import event_features
    from scorers.lab.sim.convert import to_transactions
    from scorers.models.defaults import PRIMARY_DIR
    from scorers.models.loading import load_model
    from stream_app.wiring import redis_client

    torch.set_num_threads(1)
    settings = load_settings(redis__url=redis_url, redis__socket_timeout_s=1.0)
    store = RedisFeatureStore(redis_client(settings))
    model = load_model(PRIMARY_DIR, device="cpu", role="primary").model
    assert model is not None
    fetch_ms, forward_ms = [], []
    n = min(batches, len(live) // size)
    for b in range(n):
        txs = to_transactions(live, id_prefix="t", rows=np.arange(b * size, (b + 1) * size))
        t0 = time.perf_counter()
        online, _ = store.fetch(txs, 1.0)
        t1 = time.perf_counter()
        x = np.hstack([event_features(txs), online]).astype(np.float32)
        t2 = time.perf_counter()
        model.predict(x)
        t3 = time.perf_counter()
        fetch_ms.append((t1 - t0) * 1000)
        forward_ms.append((t3 - t2) * 1000)

    def dist(v: list[float]) -> dict[str, float]:
        p = np.percentile(v[5:] if len(v) > 20 else v, [50, 99, 99.9])
        return {"p50_ms": float(p[0]), "p99_ms": float(p[1]), "p99.9_ms": float(p[2]),
                "max_ms": float(max(v))}

    return {"batch_size": size, "batches": n, "feature_fetch": dist(fetch_ms),
            "primary_forward": dist(forward_ms)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=None, help="steady events/s")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--drain", type=int, default=30_000, help="backlog events (0: skip)")
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument("--terminals", type=int, default=10_000)
    p.add_argument("--live-days", type=int, default=8,
                   help="spread the live events over this many days (less history to warm)")
    p.add_argument("--timing-batches", type=int, default=300)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra RUNG_* settings for the worker")
    args = p.parse_args(argv)
    from scorers.lab.sim.convert import to_payloads, to_transactions
    from scorers.lab.sim.load import WARM_HISTORY_DAYS, LoadConfig, generate_load

    previous = _previous_max()
    rate = args.rate or (previous / 2 if previous else DEFAULT_RATE)
    n_steady = int(rate * args.seconds)
    cfg = LoadConfig(n_customers=args.customers, n_terminals=args.terminals,
                     live_days=args.live_days)
    started = time.time()
    loadavg_before = os.getloadavg()[0]  # other work on the box: this is not an idle machine
    stack = LocalStack()
    state = stack.up()
    worker: WorkerProcess | None = None
    try:
        t0 = time.monotonic()
        load = generate_load(n_steady + args.drain, cfg, args.seed,
                             history_days=WARM_HISTORY_DAYS, end_s=time.time())
        _warm(state.redis_url, load.history)
        warm_s = time.monotonic() - t0
        prefix = f"bench-share-{uuid.uuid4().hex[:8]}"
        names = TopicNames.with_prefix(prefix)
        conf: dict[str, Any] = {"bootstrap.servers": state.bootstrap_servers}
        create_rung_topics(conf, names, partitions=6)
        env = dict(kv.split("=", 1) for kv in args.env)
        worker = WorkerProcess(state.bootstrap_servers, state.redis_url, prefix, env=env)
        worker.wait_ready(120.0)
        ready_ms = time.time() * 1000.0
        live = load.live
        steady = produce_events(conf, names.transactions,
                                to_transactions(live, id_prefix="s",
                                                rows=np.arange(n_steady, dtype=np.int64)),
                                rate_per_s=rate, duration_s=args.seconds)
        inputs = {r.key or b"": r.timestamp_ms
                  for r in read_topic(conf, names.transactions, 60.0, "read_uncommitted")}
        steady_scores = _await(conf, names.scores, {i.encode() for i in steady.ids}, 90.0)
        text = worker.metrics_text()
        steady_stages = stage_quantiles(text)
        results: dict[str, Any] = {
            "steady": {"rate_per_s": rate, "seconds": args.seconds, "sent": steady.sent,
                       **share_report(steady_scores, inputs, ready_ms + FIRST_S * 1000),
                       "worker_stages": steady_stages, "worker_counters": counters(text),
                       "loadavg_1m_after": os.getloadavg()[0]}}
        if args.drain:
            results["drain"] = _drain(conf, names, live, n_steady, args.drain,
                                      to_payloads, produce_bulk)
            max_rate = results["drain"]["records_per_s"]
            results["steady"]["load_fraction_of_max"] = rate / max_rate if max_rate else None
        worker.terminate(30.0)
        worker = None
        timing_live = live.take(np.arange(min(len(live), args.timing_batches * 512)))
        results["in_process_512"] = in_process_timings(state.redis_url, timing_live,
                                                       args.timing_batches)
    finally:
        if worker is not None:
            worker.kill()
        stack.down()
    settings = {"rate_per_s": rate, "loadavg_1m_before": loadavg_before, "seconds": args.seconds, "drain": args.drain,
                "customers": args.customers, "terminals": args.terminals,
                "customer_skew": cfg.customer_skew, "terminal_skew": cfg.terminal_skew,
                "history_events": len(load.history), "warm_s": round(warm_s, 1),
                "worker_env": env, "seed": args.seed}
    doc = result_document("primary_share", settings, results, machine=machine_info(),
                          started_at=started)
    path = write_document(doc)
    print(json.dumps(doc["results"], indent=2, default=str))
    print(f"written: {path}")
    return 0


def _warm(redis_url: str, history: Any) -> None:
    from scorers.feature_store import RedisFeatureStore
    from scorers.lab.sim.demo import warm_from_data
    from stream_app.wiring import redis_client

    settings = load_settings(redis__url=redis_url, redis__socket_timeout_s=10.0)
    warm_from_data(RedisFeatureStore(redis_client(settings)), history, "hist")


def _drain(conf: dict[str, Any], names: TopicNames, live: Any, lo: int, n: int,
           to_payloads: Any, produce_bulk_: Any) -> dict[str, Any]:
    report: ProduceReport = produce_bulk_(
        conf, names.transactions, n,
        lambda a, b, stamp: to_payloads(live, lo + a, lo + b, "d", stamp))
    keys = {i.encode() for i in report.ids}
    scores = _await(conf, names.scores, keys, 180.0)
    inputs = {r.key or b"": r.timestamp_ms
              for r in read_topic(conf, names.transactions, 60.0, "read_uncommitted")
              if r.key in keys}
    span_s = (max(r.timestamp_ms for r in scores) - min(inputs.values())) / 1000.0
    out = share_report(scores, inputs, 0.0)
    del out["first_10s_scores"], out["first_10s_primary_share"]
    return {"sent": n, "seconds": span_s, "records_per_s": len(scores) / span_s, **out}


if __name__ == "__main__":
    raise SystemExit(main())
