"""The primary's forward as served against the same weights as its file holds.

`python -m benchmarks.forward` (also in `make bench`, `results.forward`): one process,
one torch thread, the committed primary (or a stand-in) at 8 / 64 / 512 rows:

- `as_served`: `TorchModel.load` + `predict` (subnormal weights set to 0 at load, an
  ensemble's members sharing one body input);
- `file_weights`: the same architecture with the file's weights loaded as they are and
  every member computing its own input (what `predict` did before both changes);
- `flush_only`: the file's weights with subnormals set to 0, members on their own.

It also checks that the three give the same scores bit for bit on its rows, and says how
many subnormal values the file holds. Writes `benchmarks/results/forward-<time>.json`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.micro import time_per_call_s
from benchmarks.report import result_document, write_document

ROWS = (8, 64, 512)


def _rows(n: int, n_in: int, seed: int = 5) -> np.ndarray:
    """Heavy-tailed, often-zero inputs (counts and amounts), like the online features."""
    rng = np.random.default_rng(seed)
    x = rng.lognormal(1.0, 1.5, size=(n, n_in)) * rng.integers(0, 2, size=(n, n_in))
    return x.astype(np.float32)


def _member_by_member(net: torch.nn.Module) -> Any:
    members = getattr(net, "members", None)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if members is None:
                return torch.sigmoid(net(x))
            return torch.sigmoid(torch.stack([m(x) for m in members]).mean(dim=0))
    return run


def measure_forward(primary_dir: Path, repeats: int = 7) -> dict[str, Any]:
    from scorers.models.manifest import load_manifest
    from scorers.models.nets import build_net, flush_subnormals
    from scorers.models.torch_model import TorchModel

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker (RUNG_MODELS__TORCH_THREADS)
    try:
        manifest = load_manifest(primary_dir)
        state = torch.load(primary_dir / "weights.pt", weights_only=True)
        raw = build_net(manifest.arch)
        raw.load_state_dict(state)
        raw.eval()
        flushed = build_net(manifest.arch)
        flushed.load_state_dict(state)
        flushed.eval()
        n_flushed = flush_subnormals(flushed)
        served = TorchModel.load(primary_dir, device="cpu")
        file_run, flush_run = _member_by_member(raw), _member_by_member(flushed)
        out: dict[str, Any] = {"model": manifest.version, "arch": manifest.arch,
                               "parameters": sum(p.numel() for p in raw.parameters()),
                               "subnormal_values": n_flushed, "torch_threads": 1, "rows": {}}
        same = True
        for n in ROWS:
            x = _rows(n, len(served.feature_names))
            xt = torch.from_numpy(x)
            ref = file_run(xt).numpy()
            same = same and np.array_equal(ref, served.predict(x)) and np.array_equal(
                ref, flush_run(xt).numpy())
            t = {"as_served": time_per_call_s(lambda x=x: served.predict(x), repeats),
                 "file_weights": time_per_call_s(lambda xt=xt: file_run(xt), repeats),
                 "flush_only": time_per_call_s(lambda xt=xt: flush_run(xt), repeats)}
            out["rows"][str(n)] = {
                **{f"{k}_us_per_record": round(v / n * 1e6, 2) for k, v in t.items()},
                "speedup": round(t["file_weights"] / t["as_served"], 2)}
        out["same_scores_bit_for_bit"] = same
        return out
    finally:
        torch.set_num_threads(threads)


def measure_forward_or_error(primary_dir: Path) -> dict[str, Any]:
    try:
        return measure_forward(primary_dir)
    except Exception as exc:  # noqa: BLE001 - one failed micro-benchmark is reported
        return {"error": str(exc)[-1500:]}


def main(argv: Sequence[str] | None = None) -> int:
    import tempfile

    from benchmarks.models import model_dirs

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="rung-forward-") as tmp:
        primary, _fallback, models = model_dirs(Path(tmp))
        results = measure_forward(primary, args.repeats)
    doc = result_document("forward", {"repeats": args.repeats, "models": models,
                                      "rows": list(ROWS)}, {"forward": results},
                          started_at=started)
    path = write_document(doc)
    for n, r in results["rows"].items():
        print(f"{n:>4} rows: as served {r['as_served_us_per_record']} µs/record, file weights "
              f"{r['file_weights_us_per_record']}, flush only {r['flush_only_us_per_record']}"
              f" ({r['speedup']}x)")
    print(f"subnormal values {results['subnormal_values']}, same scores bit for bit: "
          f"{results['same_scores_bit_for_bit']}\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
