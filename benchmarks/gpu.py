"""The GPU checks (`benchmarks/gpu.sh`): forward vs batch, the in-pipeline GPU
scorer against the raw forward, pinned vs pageable transfers, and a real CUDA
fault caught by the ladder. Results as JSON naming the device.

Without CUDA it writes `{"status": "no CUDA device", ...}` and exits 0. The
fault runs in a child process (`--fault-child`): an out-of-bounds index on a
CUDA tensor inside the model's forward raises a device-side assert, which
poisons that process's CUDA context; the child shows the ladder answering from
the CPU fallback, batch after batch, and the parent stays clean.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.e2e import bench_events
from benchmarks.models import model_dirs
from benchmarks.report import RESULTS_DIR, machine_info
from scorers.clock import SystemClock
from scorers.config import LadderConfig
from scorers.deadline import Deadline
from scorers.feature_store import InMemoryFeatureStore
from scorers.features import event_features
from scorers.models.torch_model import TorchModel
from scorers.standard import standard_ladder

BATCH_SIZES = (1, 64, 512, 4096, 32768)
CLOCK = SystemClock()


class OutOfBoundsModel:
    """A real model whose forward also gathers at an index past the end of a tensor
    on its device: on CUDA a device-side assert, on CPU an IndexError."""

    def __init__(self, inner: TorchModel) -> None:
        self._inner = inner
        self.version, self.feature_names = inner.version, inner.feature_names
        self.thresholds = inner.thresholds

    def predict(self, features: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        x = x.to(self._inner.device)
        bad = torch.full((1,), x.shape[0] + 1_000_000, dtype=torch.long, device=x.device)
        y = x[bad]  # the fault: out-of-bounds gather on the device
        if x.is_cuda:
            torch.cuda.synchronize()
        _ = y.sum().item()
        return self._inner.predict(features)


def _timed(fn: Any, repeats: int = 20) -> float:
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples))


def forward_vs_batch(model: TorchModel) -> list[dict[str, float]]:
    rng = np.random.default_rng(0)
    rows = []
    for n in BATCH_SIZES:
        x = rng.standard_normal((n, len(model.feature_names))).astype(np.float32)
        s = _timed(lambda x=x: model.predict(x))
        rows.append({"batch": n, "ms_per_call": s * 1e3, "records_per_s": n / s})
    return rows


def pipeline_vs_raw(primary: TorchModel, fallback_dir: Path) -> list[dict[str, Any]]:
    """Ladder.score_batch (features, GPU primary, post-processing) against the raw forward."""
    ladder = standard_ladder(LadderConfig(feature_timeout_s=2.0), primary=primary, fallback=fallback_dir,
                          feature_store=InMemoryFeatureStore(), event_features=event_features,
                          clock=CLOCK)
    rows = []
    try:
        for n in (512, 4096):
            txs = list(bench_events(n, f"gpu{n}"))
            x = np.random.default_rng(1).standard_normal(
                (n, len(primary.feature_names))).astype(np.float32)
            tiers = Counter(s.tier for s in ladder.score_batch(txs, Deadline.after(
                CLOCK, 5.0)))
            raw = _timed(lambda x=x: primary.predict(x))
            whole = _timed(lambda t=txs: ladder.score_batch(t, Deadline.after(CLOCK, 5.0)))
            rows.append({"batch": n, "raw_forward_ms": raw * 1e3, "ladder_ms": whole * 1e3,
                         "ladder_over_raw": whole / raw, "tiers": dict(tiers)})
    finally:
        ladder.close()
    return rows


def transfers() -> list[dict[str, float]]:
    rows = []
    for n in (4096, 262_144):
        pageable = torch.randn(n, 32)
        pinned = pageable.pin_memory()
        for kind, host in (("pageable", pageable), ("pinned", pinned)):
            s = _timed(lambda h=host: h.to("cuda", non_blocking=True))
            rows.append({"rows": n, "kind": kind, "ms": s * 1e3,
                         "gb_per_s": host.numel() * 4 / s / 1e9})
    return rows


def fault_child(primary_dir: Path, fallback_dir: Path, device: str) -> dict[str, Any]:
    """In this process: a ladder whose primary hits an out-of-bounds index on `device`."""
    model = OutOfBoundsModel(TorchModel.load(primary_dir, device=device))
    ladder = standard_ladder(LadderConfig(feature_timeout_s=2.0), primary=model, fallback=fallback_dir,
                          feature_store=InMemoryFeatureStore(), event_features=event_features,
                          clock=CLOCK)
    batches = []
    try:
        for i in range(3):
            txs = list(bench_events(256, f"fault{i}"))
            scores = ladder.score_batch(txs, Deadline.after(CLOCK, 5.0))
            batches.append({"records": len(scores),
                            "tiers": dict(Counter(s.tier for s in scores)),
                            "reasons": dict(Counter(r for s in scores for r in s.reasons))})
    finally:
        ladder.close()
    return {"device": device, "batches": batches,
            "caught": all(b["tiers"].get("primary", 0) == 0 and b["records"] == 256
                          and any(r.startswith("primary_") and "features" not in r
                                  and "deadline" not in r for r in b["reasons"])
                          for b in batches),
            "primary_breaker": str(ladder.breakers["primary"].state)}


def run_fault_in_child(primary_dir: Path, fallback_dir: Path, device: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--fault-child",
                           str(primary_dir), str(fallback_dir), device],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          timeout=180)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"child exited {proc.returncode}", "stderr": proc.stderr[-2000:]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run(out_path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = {"kind": "gpu", "machine": machine_info(),
                           "cuda_available": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        doc.update(status="no CUDA device", device=None, results={})
    else:
        with tempfile.TemporaryDirectory(prefix="rung-gpu-") as tmp:
            primary_dir, fallback_dir, models = model_dirs(Path(tmp))
            primary = TorchModel.load(primary_dir, device="cuda")
            doc.update(status="ok", device=torch.cuda.get_device_name(0), models=models,
                       torch_cuda=torch.version.cuda)
            doc["results"] = {
                "forward_vs_batch": forward_vs_batch(primary),
                "pipeline_vs_raw": pipeline_vs_raw(primary, fallback_dir),
                "transfers": transfers(),
                "cuda_fault": run_fault_in_child(primary_dir, fallback_dir, "cuda"),
            }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "gpu.json")
    p.add_argument("--fault-child", nargs=3, metavar=("PRIMARY", "FALLBACK", "DEVICE"))
    args = p.parse_args(argv)
    if args.fault_child:
        primary, fallback, device = args.fault_child
        print(json.dumps(fault_child(Path(primary), Path(fallback), device)))
        return 0
    doc = run(args.out)
    print(json.dumps({k: doc[k] for k in ("status", "device")}), f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
