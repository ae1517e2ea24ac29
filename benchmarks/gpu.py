"""The GPU checks (`benchmarks/gpu.sh`, well under 5 minutes): at batch sizes 64..8192
the raw forward against the in-ladder forward (`Ladder.score_batch`), the model's
pinned-staging forward against pageable copies, raw pinned vs pageable transfers, and
one real sticky CUDA fault that makes a worker-like child process exit with
`EXIT_CUDA_CONTEXT_LOST`. Results as JSON naming the device.

Without CUDA it writes `{"status": "no CUDA device", ...}` (plus the same exit path
with a simulated sticky error on CPU) and exits 0. The fault runs in a child process
(`--fault-child`): an out-of-bounds gather on a CUDA tensor inside the model's forward
trips a device-side assert, which poisons that process's CUDA context; the child, a
worker-like loop, sees the batch answered by the CPU fallback, finds
`fatal_error(ladder)` after it, logs `cuda_context_lost` and exits with the code; the
parent checks the code and stays clean.
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
from scorers.tiers.primary import EXIT_CUDA_CONTEXT_LOST, fatal_error

BATCH_SIZES = (64, 256, 1024, 4096, 8192)
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
        if not x.is_cuda:  # on CPU: the error type a sticky CUDA fault raises, simulated
            accelerator_error = getattr(torch, "AcceleratorError", RuntimeError)
            raise accelerator_error("CUDA error: an illegal memory access was encountered "
                                    "(simulated on CPU)")
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


def forward_vs_batch(model: TorchModel) -> list[dict[str, Any]]:
    """The model's forward per batch size, pinned staging (the default on CUDA) vs pageable."""
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    default = model.pin_host_buffers
    try:
        for n in BATCH_SIZES:
            x = rng.standard_normal((n, len(model.feature_names))).astype(np.float32)
            for pinned in (True, False):
                model.pin_host_buffers = pinned
                s = _timed(lambda x=x: model.predict(x))
                rows.append({"batch": n, "host_buffer": "pinned" if pinned else "pageable",
                             "ms_per_call": s * 1e3, "records_per_s": n / s})
    finally:
        model.pin_host_buffers = default
    return rows


def pipeline_vs_raw(primary: TorchModel, fallback_dir: Path) -> list[dict[str, Any]]:
    """Ladder.score_batch (features, GPU primary, post-processing) against the raw forward."""
    ladder = standard_ladder(LadderConfig(feature_timeout_s=2.0, fallback_reserve_s=0.5),
                             primary=primary, fallback=fallback_dir,
                             feature_store=InMemoryFeatureStore(), event_features=event_features,
                             clock=CLOCK)
    rows = []
    try:
        for n in BATCH_SIZES:
            txs = list(bench_events(n, f"gpu{n}"))
            x = np.random.default_rng(1).standard_normal(
                (n, len(primary.feature_names))).astype(np.float32)
            tiers = Counter(s.tier for s in ladder.score_batch(txs, Deadline.after(
                CLOCK, 10.0)))
            raw = _timed(lambda x=x: primary.predict(x))
            whole = _timed(lambda t=txs: ladder.score_batch(t, Deadline.after(CLOCK, 10.0)),
                           repeats=10)
            rows.append({"batch": n, "raw_forward_ms": raw * 1e3, "ladder_ms": whole * 1e3,
                         "ladder_over_raw": whole / raw, "tiers": dict(tiers)})
    finally:
        ladder.close()
    return rows


def transfers() -> list[dict[str, float]]:
    rows = []
    for n in (*BATCH_SIZES, 262_144):
        pageable = torch.randn(n, 32)
        pinned = pageable.pin_memory()
        for kind, host in (("pageable", pageable), ("pinned", pinned)):
            s = _timed(lambda h=host: h.to("cuda", non_blocking=True))
            rows.append({"rows": n, "kind": kind, "ms": s * 1e3,
                         "gb_per_s": host.numel() * 4 / s / 1e9})
    return rows


def fault_child(primary_dir: Path, fallback_dir: Path, device: str) -> dict[str, Any]:
    """A worker-like loop in this process: a ladder whose primary hits an out-of-bounds
    index on `device`; after each batch it checks `fatal_error(ladder)`, as the worker
    does, and stops with that fault's code (`exit_code`; `main` exits with it). Prints
    one JSON line per batch."""
    batches: list[dict[str, Any]] = []
    exit_code = 0
    model = OutOfBoundsModel(TorchModel.load(primary_dir, device=device))
    ladder = standard_ladder(LadderConfig(feature_timeout_s=2.0), primary=model,
                             fallback=fallback_dir, feature_store=InMemoryFeatureStore(),
                             event_features=event_features, clock=CLOCK)
    try:
        for i in range(5):
            txs = list(bench_events(256, f"fault{i}"))
            scores = ladder.score_batch(txs, Deadline.after(CLOCK, 5.0))
            lost = fatal_error(ladder)
            batches.append({"batch": i, "records": len(scores),
                            "tiers": dict(Counter(s.tier for s in scores)),
                            "reasons": dict(Counter(r for s in scores for r in s.reasons)),
                            "primary_breaker": ladder.breakers["primary"].state.value,
                            "fatal": str(lost) if lost else None})
            print(json.dumps(batches[-1]), flush=True)
            if lost is not None:
                print(json.dumps({"event": "cuda_context_lost", "exit_code": lost.exit_code}),
                      file=sys.stderr, flush=True)
                exit_code = lost.exit_code
                break
    finally:
        ladder.close()
    return {"device": device, "batches": batches, "exit_code": exit_code,
            "caught": bool(batches) and all(
                b["tiers"].get("primary", 0) == 0 and b["records"] == 256
                and any(r.startswith("primary_") and "features" not in r and "deadline" not in r
                        for r in b["reasons"]) for b in batches),
            "primary_breaker": ladder.breakers["primary"].state.value}


def run_fault_in_child(primary_dir: Path, fallback_dir: Path, device: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--fault-child",
                           str(primary_dir), str(fallback_dir), device],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          timeout=120)
    batches = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith('{"batch"')]
    return {"device": device, "exit_code": proc.returncode,
            "expected_exit_code": EXIT_CUDA_CONTEXT_LOST,
            "exited_for_restart": proc.returncode == EXIT_CUDA_CONTEXT_LOST,
            "batches_before_exit": batches,
            "answered_by_fallback": bool(batches) and all(
                b["records"] == 256 and b["tiers"].get("fallback", 0) == 256 for b in batches),
            "stderr_tail": proc.stderr[-1500:]}


def run(out_path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = {"kind": "gpu", "machine": machine_info(),
                           "cuda_available": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        doc.update(status="no CUDA device", device=None, results={})
        with tempfile.TemporaryDirectory(prefix="rung-gpu-") as tmp:
            primary_dir, fallback_dir, models = model_dirs(Path(tmp))
            doc["sticky_exit_simulated_on_cpu"] = run_fault_in_child(
                primary_dir, fallback_dir, "cpu")
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
        result = fault_child(Path(primary), Path(fallback), device)
        exit_code: int = result["exit_code"]
        return exit_code
    doc = run(args.out)
    print(json.dumps({k: doc[k] for k in ("status", "device")}), f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
