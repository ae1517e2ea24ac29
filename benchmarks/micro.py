"""Micro-benchmarks, in process, no broker: decode, features, ladder overhead, forward.

Each timing is the median of `repeats` runs of a loop long enough to be
measured (per-record or per-call microseconds in the JSON).
"""

from __future__ import annotations

import importlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks.e2e import bench_events
from topics.codec import _decode_checked, decode_transaction, transaction_to_dict

BATCH_SIZES = (1, 8, 64, 512, 4096)


def time_per_call_s(fn: Callable[[], object], repeats: int = 5, min_time_s: float = 0.05) -> float:
    """Median seconds per call of `fn` over `repeats` timed loops."""
    fn()  # warm
    loops = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        if time.perf_counter() - t0 >= min_time_s or loops >= 1 << 20:
            break
        loops *= 2
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - t0) / loops)
    return statistics.median(samples)


def decode_us_per_record(n: int = 512) -> float:
    payloads = [orjson.dumps(transaction_to_dict(t)) for t in bench_events(n, "micro")]
    return time_per_call_s(lambda: [decode_transaction(p) for p in payloads]) / n * 1e6


def decode_field_by_field_us_per_record(n: int = 512) -> float:
    """The same records through the field-by-field path (what every record paid before the
    inline fast path; malformed records still take it): before/after in one run."""
    payloads = [orjson.dumps(transaction_to_dict(t)) for t in bench_events(n, "micro")]
    loads = orjson.loads
    return time_per_call_s(lambda: [_decode_checked(loads(p)) for p in payloads]) / n * 1e6


def features_us_per_record(n: int = 512) -> float:
    from scorers.features import event_features

    txs = list(bench_events(n, "micro"))
    return time_per_call_s(lambda: event_features(txs)) / n * 1e6


def forward_vs_batch(model_dir: Path, device: str = "cpu") -> list[dict[str, float]]:
    """`TorchModel.predict` per call and per record at each batch size."""
    from scorers.models.torch_model import TorchModel

    model = TorchModel.load(model_dir, device=device)
    width = len(model.feature_names)
    rng = np.random.default_rng(0)
    out = []
    for n in BATCH_SIZES:
        x = rng.standard_normal((n, width)).astype(np.float32)
        per_call = time_per_call_s(lambda x=x: model.predict(x))
        out.append({"batch": n, "us_per_call": per_call * 1e6, "us_per_record": per_call / n * 1e6,
                    "records_per_s": n / per_call})
    return out


def ladder_overhead(repeats: int = 10) -> dict[str, Any]:
    """The core helper's `benchmarks/ladder_overhead.py`, run as it is (its own JSON)."""
    try:
        mod = importlib.import_module("benchmarks.ladder_overhead")
    except ImportError:
        return {"missing": "benchmarks/ladder_overhead.py is not in the tree"}
    out = Path(mod.OUT)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.ladder_overhead", "--repeats",
                           str(repeats)], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or not out.exists():
        return {"error": f"ladder_overhead exited {proc.returncode}: {proc.stderr[-1500:]}"}
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def run_micro(primary_dir: Path, fallback_dir: Path) -> dict[str, Any]:
    return {
        "decode_us_per_record": decode_us_per_record(),
        "decode_field_by_field_us_per_record": decode_field_by_field_us_per_record(),
        "event_features_us_per_record": features_us_per_record(),
        "primary_forward_cpu": forward_vs_batch(primary_dir),
        "fallback_forward_cpu": forward_vs_batch(fallback_dir),
        "ladder_overhead": ladder_overhead(),
    }
