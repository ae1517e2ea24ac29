"""What explanations cost: µs per reviewed record, beside the forward pass of the same rows.

Rows: simulated transactions (`scorers.lab.sim`, the handbook's generator, with their
online features computed offline) that the model itself routes to review (score at or
above its manifest's review threshold), repeated when there are fewer than a batch
needs. For each batch size of reviewed rows (8, 64, 512 by default) and each model
(primary ensemble, fallback MLP), the median (and the minimum) over `repeats` timed
calls, timed in rotation so machine noise falls on all alike, of:

- `forward_us_per_record`: `model.predict` on those rows (the baseline, same run);
- `<method>_us_per_record` for each of `METHODS`: gradient x input ("gxi", one
  backward) and integrated gradients with 4 and 8 midpoints ("ig4", "ig8"), as served
  (by hand in numpy on the CPU, `scorers.explain`);
- `ig4_autograd_us_per_record`: IG-4 through torch autograd (the way it was computed
  before; still the path on a GPU), and `ig4_speedup_over_autograd`;

plus, on the largest batch, each method's quality: how far its contributions are from
adding up to logit - reference logit (completeness error, median and p95 over the rows,
in logit units; IG converges, gxi is a first-order approximation), and how often its
top 4 features (and its top 1) are those of integrated gradients with 32 steps. `example` is one real score of
the primary, answered and explained by a ladder (`Ladder.score_batch`) on a reviewed
simulated record with its online features: what a reviewer sees.

`python -m benchmarks.explain` writes `benchmarks/results/explain-<time>.json`;
`make bench` includes the same dict under `explain`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scorers.explain import ExplainConfig, Method, attribute
from scorers.models.defaults import FALLBACK_DIR, PRIMARY_DIR
from scorers.models.integrity import module_of
from scorers.models.torch_model import TorchModel, resolve_device

SIZES = (8, 64, 512)
METHODS: tuple[tuple[str, Method, int], ...] = (("gxi", "gxi", 1), ("ig4", "ig", 4), ("ig8", "ig", 8))


def _reviewed_rows(n_customers: int, seed: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """(sim data, primary feature rows, indices) of simulated records, most recent days."""
    from scorers.lab.sim.simulator import SimConfig, simulate
    from scorers.lab.training.data import event_features_of, online_features_of

    data = simulate(SimConfig(n_customers=n_customers, n_terminals=2 * n_customers, n_days=45),
                    seed)
    full = np.concatenate([event_features_of(data), online_features_of(data)], axis=1)
    recent = np.flatnonzero(data.day >= data.day.max() - 14)  # past the 30-day windows' warm-up
    return data, full.astype(np.float32), recent


def _interleaved_us(fns: dict[str, Callable[[], object]], rows: int,
                    repeats: int) -> dict[str, tuple[float, float]]:
    """(median, min) µs per row of each function, timed in rotation (each repeat runs all
    of them once) so that a noisy machine's load falls on every function alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm: allocator, autograd graph shapes
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: (statistics.median(v) / rows * 1e6, min(v) / rows * 1e6) for k, v in times.items()}


def _top(c: np.ndarray, k: int) -> list[set[int]]:
    return [set(r) for r in np.argsort(-np.abs(c), axis=1)[:, :k].tolist()]


def _quality(module: torch.nn.Module, x: np.ndarray) -> dict[str, dict[str, float]]:
    from scorers.explain import _members, _normalised

    members = _members(module)
    assert members is not None
    xt = torch.as_tensor(x, device=next(iter(module.buffers())).device)
    with torch.no_grad():
        ref = float(np.mean([m.body(_normalised(m, xt)[1].unsqueeze(0)).item() for m in members]))
        target = module(xt).cpu().numpy() - ref
    best = attribute(module, x, "ig", 32)
    out: dict[str, dict[str, float]] = {}
    for label, method, steps in METHODS:
        c = attribute(module, x, method, steps)
        err = np.abs(c.sum(axis=1) - target)
        out[label] = {
            "completeness_error_median": round(float(np.median(err)), 4),
            "completeness_error_p95": round(float(np.percentile(err, 95)), 4),
            "top4_agreement_with_ig32": round(float(np.mean(
                [len(a & b) / 4 for a, b in zip(_top(c, 4), _top(best, 4), strict=True)])), 3),
            "top1_agreement_with_ig32": round(float(np.mean(
                np.argmax(np.abs(c), 1) == np.argmax(np.abs(best), 1))), 3)}
    out["scale"] = {"median_abs_logit_minus_reference": round(float(np.median(np.abs(target))),
                                                               3)}
    return out


def _bench_model(model: TorchModel, x_all: np.ndarray, sizes: Sequence[int],
                 repeats: int) -> dict[str, Any]:
    from scorers.explain import _attribute_torch, _members

    module = module_of(model)
    assert module is not None
    members = _members(module)
    assert members is not None
    probs = model.predict(x_all)
    reviewed = x_all[probs >= model.thresholds.review]
    if not len(reviewed):
        reviewed = x_all[np.argsort(-probs)[:64]]
    out: dict[str, Any] = {"version": model.version, "reviewed_pool": int(len(reviewed)),
                           "review_share": round(float(np.mean(probs >= model.thresholds.review)),
                                                 4), "sizes": {}}
    for n in sizes:
        x = np.resize(reviewed, (n, reviewed.shape[1])).astype(np.float32)
        fns: dict[str, Callable[[], object]] = {"forward": partial(model.predict, x)}
        fns.update({label: partial(attribute, module, x, method, steps)
                    for label, method, steps in METHODS})
        fns["ig4_autograd"] = partial(_attribute_torch, module, members, x, "ig", 4)
        timed = _interleaved_us(fns, n, repeats)
        fwd, fwd_min = timed["forward"]
        row: dict[str, float] = {"forward_us_per_record": round(fwd, 2),
                                 "forward_min_us_per_record": round(fwd_min, 2)}
        for label, _method, _steps in METHODS:
            us, us_min = timed[label]
            row[f"{label}_us_per_record"] = round(us, 2)
            row[f"{label}_min_us_per_record"] = round(us_min, 2)
            row[f"{label}_over_forward"] = round(us / fwd, 2)
        us, us_min = timed["ig4_autograd"]  # the same maths through torch autograd
        row["ig4_autograd_us_per_record"] = round(us, 2)
        row["ig4_autograd_min_us_per_record"] = round(us_min, 2)
        row["ig4_speedup_over_autograd"] = round(us / timed["ig4"][0], 2)
        out["sizes"][str(n)] = row
    x = np.resize(reviewed, (max(sizes), reviewed.shape[1])).astype(np.float32)
    out["quality"] = _quality(module, x)
    return out


def _example(primary: TorchModel, fallback: TorchModel, data: Any, full: np.ndarray,
             rows: np.ndarray) -> dict[str, Any]:
    """One reviewed record through a real ladder with its simulated online features."""
    from scorers.clock import SystemClock
    from scorers.deadline import Deadline
    from scorers.features import EVENT_FEATURE_NAMES, event_features
    from scorers.lab.sim.convert import to_transactions
    from scorers.policy import DEFAULT_POLICY_PATH, PolicyHolder, load_policy
    from scorers.standard import standard_ladder
    from topics.codec import score_to_dict

    probs = primary.predict(full[rows])
    pick = rows[np.argsort(-probs)[: max(1, int(np.sum(probs >= primary.thresholds.review)))]]
    pick = pick[len(pick) // 2: len(pick) // 2 + 1]  # a middling reviewed record, not the top
    txs = to_transactions(data, rows=pick)
    n_event = len(EVENT_FEATURE_NAMES)
    online = {t.transaction_id: full[r, n_event:] for t, r in zip(txs, pick.tolist(), strict=True)}

    class SimStore:
        def fetch(self, batch: Sequence[Any], timeout_s: float) -> tuple[np.ndarray, np.ndarray]:
            return (np.stack([online[t.transaction_id] for t in batch]),
                    np.ones(len(batch), dtype=np.bool_))

        def update(self, batch: Sequence[Any], timeout_s: float) -> None:
            return None

    from scorers.config import LadderConfig

    ladder = standard_ladder(LadderConfig(device="cpu"), primary=primary, fallback=fallback,
                             event_features=event_features, feature_store=SimStore(),
                             explain=ExplainConfig(),
                             policy=PolicyHolder(load_policy(DEFAULT_POLICY_PATH)))
    try:
        clock = SystemClock()
        score = ladder.score_batch(txs, Deadline.after(clock, 1.0))[0]
    finally:
        ladder.close()
    return {"transaction": {k: getattr(txs[0], k) for k in (
        "amount", "merchant_category", "channel", "is_international",
        "has_international_history", "account_age_days")}, "score": score_to_dict(score)}


def measure_explain(primary_dir: Path | str = PRIMARY_DIR, fallback_dir: Path | str = FALLBACK_DIR,
                    sizes: Sequence[int] = SIZES, repeats: int = 15, device: str = "cpu", n_customers: int = 1500, seed: int = 0) -> dict[str, Any]:
    torch.set_num_threads(1)  # as the worker runs (RUNG_MODELS__TORCH_THREADS=1)
    dev = resolve_device(device)
    primary = TorchModel.load(primary_dir, device=str(dev.type))
    fallback = TorchModel.load(fallback_dir, device="cpu")
    data, full, rows = _reviewed_rows(n_customers, seed)
    n_event = len(fallback.feature_names)
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(), "repeats": repeats,
        "rows": "simulated (scorers.lab.sim), the model's own review-routed rows",
        "primary": _bench_model(primary, full[rows], sizes, repeats),
        "fallback": _bench_model(fallback, full[rows, :n_event], sizes, repeats)}
    cpu_primary = primary if dev.type == "cpu" else TorchModel.load(primary_dir, device="cpu")
    out["example"] = _example(cpu_primary, fallback, data, full, rows)
    return out


def measure_explain_or_error(primary_dir: Path | str, fallback_dir: Path | str) -> dict[str, Any]:
    """`make bench`'s entry: the measurement, or what went wrong (never raises)."""
    try:
        return measure_explain(primary_dir, fallback_dir)
    except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others
        return {"error": str(exc)[-1500:]}


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.report import result_document, write_document

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    started = time.time()
    res = measure_explain(sizes=args.sizes, repeats=args.repeats, device=args.device)
    import json

    print(json.dumps(res, indent=2, default=str))
    if not args.no_write:
        doc = result_document("explain", vars(args), {"explain": res}, started_at=started)
        print(write_document(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
