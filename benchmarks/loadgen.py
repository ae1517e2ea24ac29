"""Load generation at scale: generate N events with realistic cardinality and skew, produce them.

    python -m benchmarks.loadgen --events 1000000 [--customers 100000 --terminals 10000]

Uses `KAFKA_BOOTSTRAP_SERVERS` when set, else starts a `LocalStack` in a temp
dir and stops it after. Writes `benchmarks/results/loadgen-*.json` and prints it:
generation seconds (labels included), produce seconds (encoding included), events/s,
distinct customers and terminals, the share of events on the top 1% of each, and
the number of simulated labels (not produced: they are the labels topic's, see
`stream_app.devstack.demo`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import result_document, write_document
from scorers.lab.sim.convert import to_payloads
from scorers.lab.sim.load import LoadConfig, generate_load, top_share

GOAL_TOTAL_S = 60.0  # 1,000,000 events generated and produced on a 2-core machine


def measure(bootstrap: str, events: int, cfg: LoadConfig, seed: int) -> dict[str, Any]:
    from stream_app.devstack.produce import produce_bulk
    from stream_app.kafka.admin import create_topics
    from topics.catalog import TopicSpec

    t0 = time.perf_counter()
    load = generate_load(events, cfg, seed, end_s=time.time())
    live = load.live
    gen_s = time.perf_counter() - t0
    topic = f"loadgen-{uuid.uuid4().hex[:8]}"
    conf = {"bootstrap.servers": bootstrap}
    create_topics(conf, [TopicSpec(topic, partitions=6)])
    report = produce_bulk(conf, topic, events,
                          lambda lo, hi, stamp: to_payloads(live, lo, hi, "lg", stamp))
    total_s = gen_s + report.seconds
    return {
        "events": events, "topic": topic,
        "generation_s": round(gen_s, 3), "produce_s": round(report.seconds, 3),
        "total_s": round(total_s, 3), "events_per_s": round(events / total_s),
        "produce_events_per_s": round(events / report.seconds),
        "distinct_customers": int(np.unique(live.customer).size),
        "distinct_terminals": int(np.unique(live.terminal).size),
        "top1pct_customer_share": round(top_share(live.customer), 4),
        "top1pct_terminal_share": round(top_share(live.terminal), 4),
        "fraud_share": round(float(live.is_fraud.mean()), 5),
        "labels": len(load.live_labels),  # drawn with the events (labels.simulate_labels)
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument("--terminals", type=int, default=10_000)
    p.add_argument("--customer-skew", type=float, default=LoadConfig().customer_skew)
    p.add_argument("--terminal-skew", type=float, default=LoadConfig().terminal_skew)
    p.add_argument("--placement", choices=("near", "uniform"), default="near")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="results directory")
    a = p.parse_args(argv)
    cfg = LoadConfig(n_customers=a.customers, n_terminals=a.terminals,
                     customer_skew=a.customer_skew, terminal_skew=a.terminal_skew,
                     placement=a.placement)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    stack = None
    if not bootstrap:
        from stream_app.devstack.stack import LocalStack

        stack = LocalStack(Path(tempfile.mkdtemp(prefix="rung-loadgen-")))
        bootstrap = stack.up().bootstrap_servers
    try:
        results = measure(bootstrap, a.events, cfg, a.seed)
    finally:
        if stack is not None:
            stack.down()
    results["goal_total_s"] = GOAL_TOTAL_S
    results["goal_met"] = a.events < 1_000_000 or results["total_s"] < GOAL_TOTAL_S
    settings = {"customers": a.customers, "terminals": a.terminals, "seed": a.seed,
                "customer_skew": a.customer_skew, "terminal_skew": a.terminal_skew,
                "placement": a.placement, "external_broker": stack is None}
    doc = result_document("loadgen", settings, results)
    path = write_document(doc, a.out) if a.out else write_document(doc)
    print(json.dumps(results, indent=2))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
