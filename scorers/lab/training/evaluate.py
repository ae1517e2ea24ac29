"""`rung evaluate`: every tier and the handbook's baselines on the test week, once.

Tiers: the committed (or given) primary and fallback model dirs, the rules tier
(`scorers.rules.score_rules`) and the safe default (a constant score). Baselines
(`scorers.lab.training.baselines`): the handbook's classifiers with the
hyper-parameters `rung train` chose on the validation protocol (read from
`selection.json`; selected afresh when it is missing), refit on the training week
on the primary's features. Every row scores the same test-week transactions.
Metrics: AUC ROC, average precision, Card Precision@100
(`scorers.lab.training.metrics`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import nn

from scorers.lab.sim.convert import to_transactions
from scorers.lab.training import baselines
from scorers.lab.training.data import F32, Dataset, build_dataset
from scorers.lab.training.metrics import average_precision, card_precision_at_k, roc_auc
from scorers.lab.training.train import predict
from scorers.models.manifest import Manifest, load_manifest, verify_weights
from scorers.models.nets import build_net
from scorers.rules import score_rules

SAFE_DEFAULT_SCORE: Final = 0.5
TOP_K_CARDS: Final = 100
AP_GOAL: Final = 0.70



@dataclass(frozen=True, slots=True)
class TierMetrics:
    tier: str
    auc_roc: float
    average_precision: float
    card_precision_at_100: float
    baseline: bool = False


@dataclass(frozen=True, slots=True)
class Evaluation:
    rows: tuple[TierMetrics, ...]
    scores: dict[str, F32]
    y_true: F32
    n_test: int
    n_fraud: int
    baseline_params: dict[str, dict[str, Any]] = field(default_factory=dict)


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


def baseline_params(ds: Dataset, selection: Path | None) -> dict[str, dict[str, Any]]:
    """The chosen hyper-parameters per baseline: from `selection` (written by `rung train`)
    when it exists, else selected now on the validation protocol."""
    if selection is not None and selection.exists():
        chosen = json.loads(selection.read_text())["baselines"]
        return {name: dict(chosen[name]["params"]) for name in baselines.GRIDS}
    return {name: baselines.select(name, ds.valid_train.primary, ds.valid_train.y,
                                   ds.valid.primary, ds.valid.y).params
            for name in baselines.GRIDS}


def baseline_scores(ds: Dataset, params: dict[str, dict[str, Any]]) -> dict[str, F32]:
    """Each baseline refit on the training week with its chosen parameters, on the test week."""
    return {name: baselines.score(baselines.fit(name, p, ds.train.primary, ds.train.y),
                                  ds.test.primary)
            for name, p in params.items()}


def evaluate(primary_dir: Path, fallback_dir: Path, seed: int = 0,
             dataset: Dataset | None = None, selection: Path | None = None,
             with_baselines: bool = True) -> Evaluation:
    ds = dataset or build_dataset(seed)
    scores = tier_scores(ds, primary_dir, fallback_dir)
    params = baseline_params(ds, selection) if with_baselines else {}
    scores |= baseline_scores(ds, params)
    day = ds.data.day[ds.test.rows]
    card = ds.data.customer[ds.test.rows]
    y = ds.test.y
    rows = tuple(
        TierMetrics(name, roc_auc(y, s), average_precision(y, s),
                    card_precision_at_k(day, card, y, s, TOP_K_CARDS), name in params)
        for name, s in scores.items()
    )
    return Evaluation(rows, scores, y, int(y.shape[0]), int(y.sum()), params)


def markdown_table(evaluation: Evaluation) -> str:
    lines = ["| tier / baseline | AUC ROC | average precision | Card Precision@100 |",
             "|---|---:|---:|---:|"]
    lines += [f"| {f'*{r.tier}*' if r.baseline else r.tier} | {r.auc_roc:.3f} | "
              f"{r.average_precision:.3f} | {r.card_precision_at_100:.3f} |"
              for r in evaluation.rows]
    return "\n".join(lines)


def summary_json(evaluation: Evaluation) -> str:
    """One line: every row's metrics, the baselines' parameters, the AP goal."""
    primary = next((r for r in evaluation.rows if r.tier == "primary"), None)
    return json.dumps({
        "n_test": evaluation.n_test, "n_fraud": evaluation.n_fraud,
        "rows": {r.tier: {"kind": "baseline" if r.baseline else "tier",
                          "auc_roc": round(r.auc_roc, 4),
                          "average_precision": round(r.average_precision, 4),
                          "card_precision_at_100": round(r.card_precision_at_100, 4)}
                 for r in evaluation.rows},
        "baseline_params": evaluation.baseline_params,
        "ap_goal": AP_GOAL,
        "primary_meets_ap_goal": bool(primary and primary.average_precision >= AP_GOAL),
    }, sort_keys=True)
