"""`rung train`: fit the primary and the fallback, calibrate thresholds, write model dirs.

Both are `scorers.models.nets` MLPs trained with Adam on binary cross-entropy,
their normalisation buffers set from the training week; the epoch with the best
average precision on the delay week is kept. The primary's MLPs also see step
indicators at per-feature tree split points learned on the training week
(`scorers.lab.training.edges`), and the primary is an ensemble of `n_members` such
MLPs trained from seeds seed, seed+1, ... whose logits are averaged. Thresholds
are calibrated on the delay week: review = lowest score whose alerts are at least
`REVIEW_PRECISION` precise, block = the same at `BLOCK_PRECISION`. Seeds fix
everything; on CPU, training runs on one intra-op thread (faster on small
batches and on a loaded machine, and the same result on any core count).
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from scorers.features import FALLBACK_FEATURE_NAMES, PRIMARY_FEATURE_NAMES
from scorers.lab.training.data import Dataset, build_dataset
from scorers.lab.training.edges import step_edges
from scorers.lab.training.metrics import average_precision, precision_recall_curve, roc_auc
from scorers.models.manifest import Manifest, Thresholds, sha256_file, write_manifest
from scorers.models.nets import MLP, Ensemble, build_net

WEIGHTS_FILE: Final = "weights.pt"
REVIEW_PRECISION: Final = 0.3
BLOCK_PRECISION: Final = 0.9
MIN_ALERTS: Final = 20

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class TrainSpec:
    name: str  # "primary" or "fallback"
    arch: dict[str, Any]
    epochs: int
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-5


# counts, mean amounts and amount ratios are heavy-tailed: the net takes their log1p
LOG1P_PREFIXES: Final = ("amount", "customer_nb_tx", "customer_mean_amount", "terminal_nb_tx",
                         "amount_over_customer_mean")
PRIMARY_MEMBER_ARCH: Final[dict[str, Any]] = {
    "type": "mlp", "n_in": len(PRIMARY_FEATURE_NAMES), "hidden": [128, 64], "dropout": 0.2,
    "log1p_inputs": [i for i, n in enumerate(PRIMARY_FEATURE_NAMES)
                     if n.startswith(LOG1P_PREFIXES)],
    "n_steps": 4}
PRIMARY_SPEC: Final = TrainSpec(
    "primary", {"type": "ensemble", "n_in": len(PRIMARY_FEATURE_NAMES), "n_members": 5,
                "member": PRIMARY_MEMBER_ARCH},
    epochs=15, lr=2e-3, weight_decay=1e-4)
FALLBACK_SPEC: Final = TrainSpec(
    "fallback", {"type": "mlp", "n_in": len(FALLBACK_FEATURE_NAMES), "hidden": [16],
                 "dropout": 0.0}, epochs=20)


@dataclass(frozen=True, slots=True)
class TrainedModel:
    manifest: Manifest
    model_dir: Path
    valid_scores: F32 = field(repr=False)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def predict(net: nn.Module, x: F32, device: torch.device | None = None) -> F32:
    """Fraud probabilities (sigmoid of the logits), eval mode, in chunks."""
    dev = device or next(net.parameters()).device
    net.eval()
    out: list[F32] = []
    with torch.no_grad():
        for lo in range(0, x.shape[0], 65_536):
            logits = net(torch.from_numpy(np.ascontiguousarray(x[lo:lo + 65_536])).to(dev))
            out.append(torch.sigmoid(logits).cpu().numpy().astype(np.float32))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def first_mlp(net: nn.Module) -> MLP:
    """The net itself, or an ensemble's first member (whose buffers the manifest shows)."""
    for module in net.modules():
        if isinstance(module, MLP):
            return module
    raise TypeError(f"no MLP in {type(net).__name__}")


def _set_input_buffers(net: nn.Module, x: F32, y: F32) -> None:
    """Normalisation from the training rows; step edges from their labels."""
    if not isinstance(net, MLP):
        raise TypeError(f"expected an MLP, got {type(net).__name__}")
    if net.n_steps:
        net.edges.copy_(torch.from_numpy(step_edges(x, y, net.n_steps)))
    z = net.transform_inputs(torch.from_numpy(x)).numpy()
    mean = z.mean(axis=0, dtype=np.float64)
    std = z.std(axis=0, dtype=np.float64)
    std = np.where(std > 1e-6, std, 1.0)
    net.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
    net.std.copy_(torch.from_numpy(std.astype(np.float32)))


def fit(spec: TrainSpec, x: F32, y: F32, x_valid: F32, y_valid: F32, seed: int,
        device: torch.device) -> tuple[nn.Module, float]:
    """Train from a fixed seed; return the net (on CPU) and its delay-week AP.

    An ensemble arch trains each member with `fit_one` from seed + k and averages them.
    """
    if spec.arch.get("type") != "ensemble":
        return fit_one(spec, spec.arch, x, y, x_valid, y_valid, seed, device)
    net = build_net(spec.arch)
    if not isinstance(net, Ensemble):
        raise TypeError(f"expected an Ensemble, got {type(net).__name__}")
    for k, slot in enumerate(net.members):
        member, _ = fit_one(spec, spec.arch["member"], x, y, x_valid, y_valid, seed + k, device)
        slot.load_state_dict(member.state_dict())
    return net, average_precision(y_valid, predict(net, x_valid, torch.device("cpu")))


def fit_one(spec: TrainSpec, arch: dict[str, Any], x: F32, y: F32, x_valid: F32,
            y_valid: F32, seed: int, device: torch.device) -> tuple[nn.Module, float]:
    """Train one `arch` net from a fixed seed; the best epoch by delay-week AP, and its AP."""
    torch.manual_seed(seed)
    net = build_net(arch)
    _set_input_buffers(net, x, y)
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    gen = torch.Generator().manual_seed(seed)
    best_ap, best_state = -1.0, copy.deepcopy(net.state_dict())
    for _ in range(spec.epochs):
        net.train()
        order = torch.randperm(x.shape[0], generator=gen).to(device)
        for lo in range(0, x.shape[0], spec.batch_size):
            idx = order[lo:lo + spec.batch_size]
            opt.zero_grad()
            loss_fn(net(xt[idx]), yt[idx]).backward()
            opt.step()
        ap = average_precision(y_valid, predict(net, x_valid, device))
        if ap > best_ap:
            best_ap, best_state = ap, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    return net.cpu(), best_ap


def calibrate_thresholds(y: F32, scores: F32) -> Thresholds:
    """Lowest thresholds whose alerts reach the review / block precision on `scores`."""
    precision, _, thresholds = precision_recall_curve(y, scores)
    ranked = np.sort(scores)
    n_alerts = ranked.shape[0] - np.searchsorted(ranked, thresholds, side="left")

    def lowest(target: float) -> float:
        ok = np.flatnonzero((precision >= target) & (n_alerts >= MIN_ALERTS))
        return float(thresholds[ok[-1]]) if ok.size else 1.0

    review, block = lowest(REVIEW_PRECISION), lowest(BLOCK_PRECISION)
    return Thresholds(review=round(min(review, block), 6), block=round(block, 6))


def save_model_dir(model_dir: Path, spec: TrainSpec, net: nn.Module,
                   feature_names: tuple[str, ...], thresholds: Thresholds,
                   metrics: dict[str, float]) -> Manifest:
    """Write `weights.pt` (a state_dict) and `manifest.json`; the version embeds the sha256."""
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    weights = model_dir / WEIGHTS_FILE
    torch.save(net.state_dict(), weights)
    digest = sha256_file(weights)
    manifest = Manifest(
        name=spec.name, version=f"{spec.name}-{digest[:12]}", weights_file=WEIGHTS_FILE,
        sha256=digest, feature_names=feature_names, arch=dict(spec.arch), thresholds=thresholds,
        norm_mean=tuple(round(float(v), 6) for v in first_mlp(net).mean.tolist()),
        norm_std=tuple(round(float(v), 6) for v in first_mlp(net).std.tolist()),
        metrics={k: round(v, 6) for k, v in metrics.items()},
    )
    write_manifest(model_dir, manifest)
    return manifest


def train_one(spec: TrainSpec, ds: Dataset, out_dir: Path, seed: int,
              device: torch.device) -> TrainedModel:
    primary = spec.name == "primary"
    names = PRIMARY_FEATURE_NAMES if primary else FALLBACK_FEATURE_NAMES
    train_x = ds.train.primary if primary else ds.train.event
    valid_x = ds.valid.primary if primary else ds.valid.event
    net, _ = fit(spec, train_x, ds.train.y, valid_x, ds.valid.y, seed, device)
    valid_scores = predict(net, valid_x, torch.device("cpu"))
    metrics = {"valid_auc_roc": roc_auc(ds.valid.y, valid_scores),
               "valid_average_precision": average_precision(ds.valid.y, valid_scores),
               "train_rows": float(train_x.shape[0]), "seed": float(seed)}
    thresholds = calibrate_thresholds(ds.valid.y, valid_scores)
    model_dir = out_dir / spec.name
    manifest = save_model_dir(model_dir, spec, net, names, thresholds, metrics)
    return TrainedModel(manifest, model_dir, valid_scores)


def train_all(out_dir: Path, seed: int = 0,
              dataset: Dataset | None = None) -> tuple[TrainedModel, TrainedModel]:
    """Train primary and fallback on the handbook protocol; write both model dirs."""
    ds = dataset or build_dataset(seed)
    device = pick_device()
    torch.use_deterministic_algorithms(True, warn_only=True)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # 512-row batches on a small MLP: a second thread only adds sync overhead
        # (measured 0.4 s vs 9.5 s an epoch on a loaded 2-core machine)
        torch.set_num_threads(1)
    try:
        return (train_one(PRIMARY_SPEC, ds, out_dir, seed, device),
                train_one(FALLBACK_SPEC, ds, out_dir, seed + 1, device))
    finally:
        torch.set_num_threads(threads)
