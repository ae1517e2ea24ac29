"""`rung evaluate`: every tier on the handbook protocol's test week.

Tiers: the committed (or given) primary and fallback model dirs, the rules tier
(`scorers.rules.score_rules`) and the safe default (a constant score). Metrics:
AUC ROC, average precision, Card Precision@100 (`scorers.lab.training.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from scorers.lab.sim.convert import to_transactions
from scorers.lab.training.data import Dataset, build_dataset
from scorers.lab.training.metrics import average_precision, card_precision_at_k, roc_auc
from scorers.lab.training.train import predict
from scorers.models.manifest import Manifest, load_manifest, verify_weights
from scorers.models.nets import build_net
from scorers.rules import score_rules

SAFE_DEFAULT_SCORE: Final = 0.5
TOP_K_CARDS: Final = 100
HANDBOOK_BASELINES: Final[dict[str, tuple[float, float, float]]] = {
    "handbook best tuned baseline": (0.869, 0.687, 0.303),
    "handbook logistic regression": (0.871, 0.606, 0.291),
}

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class TierMetrics:
    tier: str
    auc_roc: float
    average_precision: float
    card_precision_at_100: float


@dataclass(frozen=True, slots=True)
class Evaluation:
    rows: tuple[TierMetrics, ...]
    scores: dict[str, F32]
    y_true: F32
    n_test: int
    n_fraud: int


def load_model(model_dir: Path) -> tuple[Manifest, nn.Module]:
    """Load a model dir the way serving does: manifest, checksum, state_dict."""
    manifest = load_manifest(model_dir)
    weights = verify_weights(model_dir, manifest)
    net = build_net(manifest.arch)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net.eval()
    return manifest, net


def tier_scores(ds: Dataset, primary_dir: Path, fallback_dir: Path) -> dict[str, F32]:
    _, primary = load_model(primary_dir)
    _, fallback = load_model(fallback_dir)
    txs = to_transactions(ds.data, rows=ds.test.rows)
    return {
        "primary": predict(primary, ds.test.primary, torch.device("cpu")),
        "fallback": predict(fallback, ds.test.event, torch.device("cpu")),
        "rules": np.asarray(score_rules(txs).scores, dtype=np.float32),
        "safe default": np.full(ds.test.rows.shape[0], SAFE_DEFAULT_SCORE, dtype=np.float32),
    }


def evaluate(primary_dir: Path, fallback_dir: Path, seed: int = 0,
             dataset: Dataset | None = None) -> Evaluation:
    ds = dataset or build_dataset(seed)
    scores = tier_scores(ds, primary_dir, fallback_dir)
    day = ds.data.day[ds.test.rows]
    card = ds.data.customer[ds.test.rows]
    y = ds.test.y
    rows = tuple(
        TierMetrics(name, roc_auc(y, s), average_precision(y, s),
                    card_precision_at_k(day, card, y, s, TOP_K_CARDS))
        for name, s in scores.items()
    )
    return Evaluation(rows, scores, y, int(y.shape[0]), int(y.sum()))


def markdown_table(evaluation: Evaluation, with_baselines: bool = True) -> str:
    lines = ["| tier | AUC ROC | average precision | Card Precision@100 |",
             "|---|---:|---:|---:|"]
    lines += [f"| {r.tier} | {r.auc_roc:.3f} | {r.average_precision:.3f} | "
              f"{r.card_precision_at_100:.3f} |" for r in evaluation.rows]
    if with_baselines:
        lines += [f"| *{name}* | {a:.3f} | {p:.3f} | {c:.3f} |"
                  for name, (a, p, c) in HANDBOOK_BASELINES.items()]
    return "\n".join(lines)
