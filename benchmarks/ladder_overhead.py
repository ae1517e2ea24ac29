"""Ladder overhead per record vs the raw model forward, CPU, batch sizes 64..4096.

For each batch size, in the same run: the raw `TorchModel.predict` on a ready
matrix (baseline), the feature inputs alone (event features + store fetch, both
trivial fakes here), and the whole `Ladder.score_batch` (validation, breakers,
the bulkhead thread hop, post-validation, Score objects, listener calls).
overhead = ladder - forward - inputs, from the minimum and the median of
interleaved repeats (the minimum is the estimate least disturbed by other load
on the machine). Goal: < 5 µs/record at 512.

    .venv/bin/python benchmarks/ladder_overhead.py [--repeats 30] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scorers.clock import SystemClock
from scorers.config import LadderConfig
from scorers.deadline import Deadline
from scorers.models.manifest import Manifest, Thresholds, sha256_file, write_manifest
from scorers.models.nets import build_net
from scorers.models.torch_model import TorchModel
from scorers.standard import standard_ladder
from topics.schemas import Tier, Transaction

EVENT = tuple(f"e{i}" for i in range(12))
ONLINE = tuple(f"o{i}" for i in range(8))
SIZES = (64, 128, 256, 512, 1024, 2048, 4096)
OUT = Path(__file__).parent / "results" / "ladder_overhead.json"


def _model_dir(root: Path, name: str, names: tuple[str, ...], hidden: list[int]) -> Path:
    d = root / name
    d.mkdir()
    arch: dict[str, Any] = {"type": "mlp", "n_in": len(names), "hidden": hidden}
    torch.save(build_net(arch).state_dict(), d / "w.pt")
    write_manifest(d, Manifest(name=name, version=f"{name}-bench", weights_file="w.pt",
                               sha256=sha256_file(d / "w.pt"), feature_names=names, arch=arch,
                               thresholds=Thresholds(review=0.5, block=0.9)))
    return d


def _event_features(txs: Sequence[Transaction]) -> np.ndarray:
    amounts = np.fromiter((t.amount or 0.0 for t in txs), dtype=np.float32, count=len(txs))
    out = np.zeros((len(txs), len(EVENT)), dtype=np.float32)
    out[:, 0] = amounts
    return out


class _Store:
    def fetch(self, txs: Sequence[Transaction], timeout_s: float) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((len(txs), len(ONLINE)), np.float32), np.ones(len(txs), np.bool_)

    def update(self, txs: Sequence[Transaction], timeout_s: float) -> None:
        return None


def _txs(n: int) -> list[Transaction]:
    return [Transaction(f"tx{i}", 1.75e9 + i, f"c{i % 97}", f"t{i % 13}", 10.0 + i % 500, "EUR",
                        "5411", False, True, 365, "pos") for i in range(n)]


def _timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """(min, median) seconds per function; the runs are interleaved so that load from
    other processes hits all of them alike. The min is the least noisy estimate."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (min(ts), statistics.median(ts)) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    clock, store = SystemClock(), _Store()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        primary = TorchModel.load(_model_dir(Path(tmp), "primary", EVENT + ONLINE, [64, 32]),
                                  device=args.device)
        fallback = TorchModel.load(_model_dir(Path(tmp), "fallback", EVENT, []), device="cpu")
        ladder = standard_ladder(LadderConfig(), primary=primary, fallback=fallback,
                                 feature_store=store, event_features=_event_features, clock=clock,
                                 event_feature_names=EVENT, online_feature_names=ONLINE)
        for n in SIZES:
            txs = _txs(n)
            x = np.hstack([_event_features(txs), store.fetch(txs, 1.0)[0]])
            scores = ladder.score_batch(txs, Deadline.after(clock, 10.0))
            assert len(scores) == n and all(s.tier is Tier.PRIMARY for s in scores)
            t = _timed({
                "forward": lambda x=x: primary.predict(x),
                "inputs": lambda t=txs: (_event_features(t), store.fetch(t, 1.0)),
                "ladder": lambda t=txs: ladder.score_batch(t, Deadline.after(clock, 10.0)),
            }, args.repeats)
            row: dict[str, float] = {"batch_size": n}
            for stat, k in (("min", 0), ("median", 1)):
                forward, inputs, whole = t["forward"][k], t["inputs"][k], t["ladder"][k]
                row |= {f"forward_s_{stat}": forward, f"inputs_s_{stat}": inputs,
                        f"ladder_s_{stat}": whole,
                        f"overhead_us_per_record_{stat}": (whole - forward - inputs) / n * 1e6}
            rows.append(row)
        ladder.close()
    result = {"benchmark": "ladder_overhead", "device": str(primary.device),
              "cpu": platform.processor() or platform.machine(), "torch_threads": 1,
              "repeats": args.repeats, "goal_us_per_record_at_512": 5.0, "rows": rows}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'batch':>6} {'forward µs/rec':>15} {'ladder µs/rec':>14} "
          f"{'overhead µs/rec (min)':>22} {'(median)':>9}")
    for r in rows:
        n = r["batch_size"]
        print(f"{n:>6.0f} {r['forward_s_min'] / n * 1e6:>15.2f} {r['ladder_s_min'] / n * 1e6:>14.2f} "
              f"{r['overhead_us_per_record_min']:>22.2f} {r['overhead_us_per_record_median']:>9.2f}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
