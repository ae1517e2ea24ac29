"""The training reference for drift: `reference.json` next to a model's manifest.

    python -m scorers.lab.training.reference scorers/artifacts/primary [--seed 0]

rebuilds the simulator's dataset (`data.build_dataset`, the seed the model was
trained with), takes the training week the final model was refit on
(`Dataset.train`), and writes, for the main features (`DRIFT_FEATURES`, those the
model has) and for the model's own score on those rows, the bin edges and the share
of rows per bin. The live side (`stream_app.quality.drift`) bins committed traffic
into the same bins and exports the PSI per feature and model version.

Bins: at most `DEFAULT_BINS`; decile cut points, or, for a feature with few distinct
values (flags, small counts), the midpoints between them. A value equal to a cut
point falls in the lower bin (`np.searchsorted(..., side="left")`), the rule
`stream_app.quality.drift.Histogram.counts` applies online.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from scorers.lab.training.data import Split, build_dataset
from scorers.models.loading import load_model

REFERENCE_FILE: Final = "reference.json"
SCORE: Final = "score"
DEFAULT_BINS: Final = 10
# The inputs that carry most of the signal or move first when traffic changes.
DRIFT_FEATURES: Final[tuple[str, ...]] = (
    "log_amount",
    "is_night",
    "is_international",
    "log_account_age_days",
    "channel_ecom",
    "customer_nb_tx_1d",
    "customer_mean_amount_7d",
    "terminal_nb_tx_7d_delay7",
    "terminal_risk_7d_delay7",
    "amount_over_customer_mean_7d",
)


def bin_edges(values: npt.ArrayLike, bins: int = DEFAULT_BINS) -> list[float]:
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return []
    distinct = np.unique(x)
    if distinct.size <= bins:
        return [float(v) for v in (distinct[1:] + distinct[:-1]) / 2.0]
    cuts = np.unique(np.quantile(x, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    return [float(v) for v in cuts if v < distinct[-1]]


def histogram(values: npt.ArrayLike, bins: int = DEFAULT_BINS) -> dict[str, list[float]]:
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    edges = bin_edges(x, bins)
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), x, side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1)
    shares = [float(c) / max(1, x.size) for c in counts]
    shares[-1] = 1.0 - sum(shares[:-1])
    return {"edges": edges, "proportions": shares}


def build_reference(model_dir: Path, split: Split, source: str,
                    features: Sequence[str] = DRIFT_FEATURES) -> dict[str, Any]:
    """The reference of the model in `model_dir` over `split` (its input rows)."""
    loaded = load_model(model_dir, device="cpu")
    model = loaded.usable
    if model is None:
        raise SystemExit(f"{model_dir}: {loaded.reason}")
    names = tuple(model.feature_names)
    x = split.primary if split.primary.shape[1] == len(names) else split.event
    if x.shape[1] != len(names):
        raise SystemExit(f"{model_dir}: the model takes {len(names)} features, the dataset "
                         f"has {split.primary.shape[1]} or {split.event.shape[1]}")
    hists = {name: histogram(x[:, names.index(name)]) for name in features if name in names}
    scores = np.concatenate([model.predict(x[i:i + 8192]) for i in range(0, len(x), 8192)])
    hists[SCORE] = histogram(scores)
    return {"model_version": model.version, "feature_names": list(names), "rows": int(len(x)),
            "source": source, "histograms": hists}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0, help="simulator seed (models: 0)")
    args = parser.parse_args(argv)
    ds = build_dataset(args.seed)
    source = f"scorers.lab simulator seed {args.seed}, training week (Dataset.train)"
    ref = build_reference(args.model_dir, ds.train, source)
    out = args.model_dir / REFERENCE_FILE
    out.write_text(json.dumps(ref, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}: {len(ref['histograms'])} histograms over {ref['rows']:,} rows")


if __name__ == "__main__":
    main()
