"""Precision-recall curves of every tier in one PNG (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from scorers.lab.training.metrics import average_precision, precision_recall_curve


def plot_pr_curves(y_true: npt.NDArray[np.float32],
                   scores: Mapping[str, npt.NDArray[np.float32]], path: Path,
                   title: str = "Precision-recall, test week (clean protocol)",
                   dashed: Collection[str] = ()) -> Path:
    """One step curve per scorer; the names in `dashed` (the baselines) drawn dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    for name, s in scores.items():
        precision, recall, _ = precision_recall_curve(y_true, s)
        ap = average_precision(y_true, s)
        ax.step(np.r_[0.0, recall], np.r_[precision[:1], precision], where="pre",
                label=f"{name} (AP {ap:.3f})", linestyle="--" if name in dashed else "-")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small", framealpha=0.9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
