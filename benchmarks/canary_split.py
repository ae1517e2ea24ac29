"""What a canary costs the primary tier's model call: `python -m benchmarks.canary_split`.

The shipped primary, loaded twice (champion and candidate), on one batch of `--rows` rows
of `synthetic_events` customers (`--customers`), through `scorers.tiers.routed_run`:
without a canary (one `run_model` call, today's path) and with a canary of `--fraction`
(the rows routed by the stable customer hash, two calls on the same bulkhead), measured
alternately in the same run (`--rounds` each), plus the routing mask alone. Device:
`--device` (auto: CUDA when present). Writes `benchmarks/results/canary_split-<time>.json`.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from benchmarks.report import latency_summary_ms, ratio, result_document, write_document
from scorers.clock import SystemClock
from scorers.deadline import Deadline
from scorers.executor import BoundedExecutor
from scorers.models.defaults import PRIMARY_DIR
from scorers.models.slot import Canary, ModelSlot
from scorers.models.torch_model import TorchModel
from scorers.tiers.routed_run import Route, run_routes
from stream_app.devstack.produce import synthetic_events


def measure(rows: int, fraction: float, customers: int, rounds: int,
            device: str) -> dict[str, Any]:
    torch.set_num_threads(1)
    champion = TorchModel.load(PRIMARY_DIR, device=device)
    candidate = TorchModel.load(PRIMARY_DIR, device=device)
    txs = list(synthetic_events(rows, customers=customers))
    slot = ModelSlot(champion, Canary(candidate, fraction))
    x = np.random.default_rng(0).random((rows, len(champion.feature_names)), dtype=np.float32)
    executor, clock = BoundedExecutor(1, 4), SystemClock()
    mask = slot.candidate_mask(txs)
    alone: list[Route] = [(champion, np.ones(rows, dtype=np.bool_))]
    split: list[Route] = [(champion, ~mask), (candidate, mask)]
    times: dict[str, list[float]] = {"no_canary": [], "canary": [], "routing_mask": []}
    try:
        for i in range(rounds + 20):  # the first 20 warm up
            for name, routes in (("no_canary", alone), ("canary", split)):
                t0 = time.perf_counter()
                run_routes(routes, x, executor, Deadline.after(clock, 5.0), 8, None, clock)
                if i >= 20:
                    times[name].append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            slot.candidate_mask(txs)
            if i >= 20:
                times["routing_mask"].append((time.perf_counter() - t0) * 1e3)
    finally:
        executor.close()
    out: dict[str, Any] = {k: latency_summary_ms(v) for k, v in times.items()}
    out["candidate_rows"] = int(mask.sum())
    out["p50_ratio_canary_over_none"] = ratio(out["canary"]["p50_ms"],
                                              out["no_canary"]["p50_ms"])
    out["device"] = str(champion.device)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    started = time.time()
    results = measure(a.rows, a.fraction, a.customers, a.rounds, a.device)
    doc = result_document("canary_split", vars(a), results, started_at=started)
    path = write_document(doc)
    for key in ("no_canary", "canary", "routing_mask"):
        r = results[key]
        print(f"{key:13s} p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms")
    print(f"canary/no-canary p50: {results['p50_ratio_canary_over_none']:.3f} "
          f"({results['candidate_rows']} of {a.rows} rows on the candidate, "
          f"{results['device']}) -> {path}")


if __name__ == "__main__":
    main()
