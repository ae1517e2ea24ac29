"""`rung train`: fit the primary and the fallback, calibrate thresholds, write model dirs.

Both are `scorers.models.nets` MLPs trained with Adam on binary cross-entropy,
their normalisation buffers set from their training rows. Clean protocol
(`scorers.lab.training.data`): each is first trained on the validation training
week (days 101-107) and early-stopped on the validation week (days 115-121, one
delay later); the number of epochs and the thresholds come from there. Then the
same spec and seeds are refit on the training week (days 115-121) for exactly
that many epochs. Neither the delay week nor the test week is looked at.

The primary's MLPs also see step indicators at per-feature tree split points
learned on their training rows (`scorers.lab.training.edges`), and the primary is
an ensemble of `n_members` such MLPs trained from seeds seed, seed+1, ... whose
logits are averaged. Thresholds are calibrated on the validation week (the
validated model's scores): review = lowest score whose alerts are at least
`REVIEW_PRECISION` precise, block = the same at `BLOCK_PRECISION`. Seeds fix
everything; on CPU, training runs on one intra-op thread (faster on small
batches and on a loaded machine, and the same result on any core count).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import nn

from scorers.features import FALLBACK_FEATURE_NAMES, PRIMARY_FEATURE_NAMES
from scorers.lab.training import baselines
from scorers.lab.training.data import F32, Dataset, Split, build_dataset
from scorers.lab.training.edges import step_edges
from scorers.lab.training.metrics import average_precision, precision_recall_curve, roc_auc
from scorers.models.manifest import Manifest, Thresholds, sha256_file, write_manifest
from scorers.models.nets import MLP, Ensemble, build_net

WEIGHTS_FILE: Final = "weights.pt"
SELECTION_FILE: Final = "selection.json"  # next to the model dirs
REVIEW_PRECISION: Final = 0.3
BLOCK_PRECISION: Final = 0.9
MIN_ALERTS: Final = 20



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
    ap_by_epoch: tuple[float, ...] = ()  # validation AP after each epoch (validation run)


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


def _logits(net: nn.Module, x: F32) -> F32:
    net.eval()
    with torch.no_grad():
        dev = next(net.parameters()).device
        out = [net(torch.from_numpy(np.ascontiguousarray(x[lo:lo + 65_536])).to(dev)).cpu()
               for lo in range(0, x.shape[0], 65_536)]
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros(0, np.float32)


def _train_member(spec: TrainSpec, arch: dict[str, Any], x: F32, y: F32, seed: int,
                  device: torch.device, epochs: int,
                  on_epoch: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """Train one `arch` net from a fixed seed for exactly `epochs` epochs."""
    torch.manual_seed(seed)
    net = build_net(arch)
    _set_input_buffers(net, x, y)
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        order = torch.randperm(x.shape[0], generator=gen).to(device)
        for lo in range(0, x.shape[0], spec.batch_size):
            idx = order[lo:lo + spec.batch_size]
            opt.zero_grad()
            loss_fn(net(xt[idx]), yt[idx]).backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(net)
    return net.cpu()


def _members(spec: TrainSpec) -> list[dict[str, Any]]:
    if spec.arch.get("type") == "ensemble":
        return [spec.arch["member"]] * int(spec.arch["n_members"])
    return [spec.arch]


def _assemble(spec: TrainSpec, states: list[dict[str, torch.Tensor]]) -> nn.Module:
    net = build_net(spec.arch)
    if spec.arch.get("type") != "ensemble":
        net.load_state_dict(states[0])
        return net
    if not isinstance(net, Ensemble):
        raise TypeError(f"expected an Ensemble, got {type(net).__name__}")
    for slot, state in zip(net.members, states, strict=True):
        slot.load_state_dict(state)
    return net


@dataclass(frozen=True, slots=True)
class Validated:
    """A spec trained on the validation training week, early-stopped on the validation week."""

    net: nn.Module  # the members at the chosen epoch
    epochs: int  # the chosen number of epochs (1-based)
    ap_by_epoch: tuple[float, ...]  # validation AP of the (ensemble) net after each epoch


def validate(spec: TrainSpec, x: F32, y: F32, x_valid: F32, y_valid: F32, seed: int,
             device: torch.device) -> Validated:
    """Train every member for `spec.epochs` epochs from seed, seed+1, ...; after each epoch
    record the validation logits; keep the epoch whose mean logit has the best AP."""
    states: list[list[dict[str, torch.Tensor]]] = []
    logits: list[list[F32]] = []
    for k, arch in enumerate(_members(spec)):
        member_states: list[dict[str, torch.Tensor]] = []
        member_logits: list[F32] = []

        def record(net: nn.Module, s: list[dict[str, torch.Tensor]] = member_states,
                   lg: list[F32] = member_logits) -> None:
            s.append({n: t.detach().cpu().clone() for n, t in net.state_dict().items()})
            lg.append(_logits(net, x_valid))

        _train_member(spec, arch, x, y, seed + k, device, spec.epochs, record)
        states.append(member_states)
        logits.append(member_logits)
    aps = tuple(average_precision(y_valid, np.mean([lg[e] for lg in logits], axis=0))
                for e in range(spec.epochs))
    best = int(np.argmax(aps))  # first best: fewer epochs on a tie
    return Validated(_assemble(spec, [s[best] for s in states]), best + 1, aps)


def fit(spec: TrainSpec, x: F32, y: F32, x_valid: F32, y_valid: F32, seed: int,
        device: torch.device) -> tuple[nn.Module, float]:
    """Train from a fixed seed, early-stopped on (x_valid, y_valid); the net (on CPU) and
    its validation AP. An ensemble arch trains each member from seed + k."""
    v = validate(spec, x, y, x_valid, y_valid, seed, device)
    return v.net, v.ap_by_epoch[v.epochs - 1]


def refit(spec: TrainSpec, x: F32, y: F32, epochs: int, seed: int,
          device: torch.device) -> nn.Module:
    """The same members and seeds, trained for exactly `epochs` epochs (no early stopping)."""
    return _assemble(spec, [_train_member(spec, arch, x, y, seed + k, device, epochs)
                            .state_dict() for k, arch in enumerate(_members(spec))])


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
    """Validate (epochs, thresholds) on the validation protocol, refit on the training week."""
    primary = spec.name == "primary"
    names = PRIMARY_FEATURE_NAMES if primary else FALLBACK_FEATURE_NAMES

    def feats(split: Split) -> F32:
        return split.primary if primary else split.event

    v = validate(spec, feats(ds.valid_train), ds.valid_train.y, feats(ds.valid), ds.valid.y,
                 seed, device)
    valid_scores = predict(v.net, feats(ds.valid), torch.device("cpu"))
    thresholds = calibrate_thresholds(ds.valid.y, valid_scores)
    net = refit(spec, feats(ds.train), ds.train.y, v.epochs, seed, device)
    metrics = {"valid_auc_roc": roc_auc(ds.valid.y, valid_scores),
               "valid_average_precision": average_precision(ds.valid.y, valid_scores),
               "epochs": float(v.epochs), "train_rows": float(ds.train.y.shape[0]),
               "seed": float(seed)}
    model_dir = out_dir / spec.name
    manifest = save_model_dir(model_dir, spec, net, names, thresholds, metrics)
    return TrainedModel(manifest, model_dir, valid_scores, v.ap_by_epoch)


def single_threaded(device: torch.device) -> Callable[[], None]:
    """Deterministic algorithms; one intra-op thread on CPU. Returns the undo."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # 512-row batches on a small MLP: a second thread only adds sync overhead
        # (measured 0.4 s vs 9.5 s an epoch on a loaded 2-core machine)
        torch.set_num_threads(1)
    return lambda: torch.set_num_threads(threads)


def select_baselines(ds: Dataset) -> dict[str, baselines.Selection]:
    """The handbook baselines' hyper-parameters, chosen on the validation protocol."""
    return {name: baselines.select(name, ds.valid_train.primary, ds.valid_train.y,
                                   ds.valid.primary, ds.valid.y) for name in baselines.GRIDS}


def write_selection(path: Path, models: tuple[TrainedModel, ...],
                    chosen: dict[str, baselines.Selection]) -> Path:
    """What was chosen on the validation protocol, and every candidate's validation AP."""
    record = {
        "protocol": {"valid_train_days": "101-107", "valid_days": "115-121",
                     "train_days": "115-121", "test_days": "129-135",
                     "metric": "validation average precision"},
        "models": {m.manifest.name: {"version": m.manifest.version,
                                     "epochs": int(m.manifest.metrics["epochs"]),
                                     "valid_ap_by_epoch": [round(a, 4) for a in m.ap_by_epoch],
                                     "thresholds": {"review": m.manifest.thresholds.review,
                                                    "block": m.manifest.thresholds.block}}
                   for m in models},
        "baselines": {name: {"params": sel.params, "valid_ap": round(sel.valid_ap, 4),
                             "grid": [{"params": p, "valid_ap": round(ap, 4)}
                                      for p, ap in sel.grid]}
                      for name, sel in chosen.items()},
    }
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def train_all(out_dir: Path, seed: int = 0, dataset: Dataset | None = None,
              with_baselines: bool = True) -> tuple[TrainedModel, TrainedModel]:
    """Train primary and fallback under the clean protocol; write both model dirs and
    (with baselines) `selection.json`."""
    ds = dataset or build_dataset(seed)
    device = pick_device()
    undo = single_threaded(device)
    try:
        models = (train_one(PRIMARY_SPEC, ds, out_dir, seed, device),
                  train_one(FALLBACK_SPEC, ds, out_dir, seed + 1, device))
    finally:
        undo()
    if with_baselines:
        write_selection(out_dir / SELECTION_FILE, models, select_baselines(ds))
    return models


def _variant(spec: TrainSpec, n_members: int, **member: Any) -> TrainSpec:
    """The spec with some member-arch or optimiser fields changed."""
    opt = {k: member.pop(k) for k in ("lr", "weight_decay", "epochs") if k in member}
    arch = dict(spec.arch) | {"n_members": n_members,
                              "member": dict(spec.arch["member"]) | member}
    return replace(spec, arch=arch, **opt)


def primary_candidates(n_members: int = 2) -> dict[str, TrainSpec]:
    """The architectures `rung train --search` compares on the validation protocol."""
    no_log: dict[str, Any] = {"log1p_inputs": []}
    return {
        "chosen: 128-64, dropout 0.2, 4 steps, wd 1e-4, lr 2e-3": _variant(PRIMARY_SPEC,
                                                                           n_members),
        "no step indicators": _variant(PRIMARY_SPEC, n_members, n_steps=0),
        "8 steps": _variant(PRIMARY_SPEC, n_members, n_steps=8),
        "256-128": _variant(PRIMARY_SPEC, n_members, hidden=[256, 128]),
        "dropout 0.1": _variant(PRIMARY_SPEC, n_members, dropout=0.1),
        "dropout 0.3": _variant(PRIMARY_SPEC, n_members, dropout=0.3),
        "weight decay 1e-5": _variant(PRIMARY_SPEC, n_members, weight_decay=1e-5),
        "lr 1e-3": _variant(PRIMARY_SPEC, n_members, lr=1e-3),
        "raw inputs (no log1p)": _variant(PRIMARY_SPEC, n_members, **no_log),
        "up to 30 epochs": _variant(PRIMARY_SPEC, n_members, epochs=30),
        "5 members": _variant(PRIMARY_SPEC, 5),
    }


def search_primary(seed: int = 0, dataset: Dataset | None = None,
                   n_members: int = 2) -> dict[str, tuple[float, int]]:
    """Validation AP (best epoch) and that epoch for every primary candidate."""
    ds = dataset or build_dataset(seed)
    device = pick_device()
    undo = single_threaded(device)
    try:
        out: dict[str, tuple[float, int]] = {}
        for name, spec in primary_candidates(n_members).items():
            v = validate(spec, ds.valid_train.primary, ds.valid_train.y, ds.valid.primary,
                         ds.valid.y, seed, device)
            out[name] = (v.ap_by_epoch[v.epochs - 1], v.epochs)
        return out
    finally:
        undo()
