"""Drift: population stability index (PSI) of live inputs and scores against training.

A model directory may hold `reference.json` next to its manifest: for a few main
features and for the model's score, the bin edges and the share of the training
rows in each bin (`scorers.lab.training.reference` writes it from the training
week). Online, `DriftMonitor` bins what the worker committed into the same bins
(one `np.searchsorted` + `np.bincount` per feature per batch, on the worker's
post-commit thread, `stream_app.live.shadow`) and exports, every interval, per
(feature, model_version):

    PSI = sum_i (live_i - ref_i) * ln(live_i / ref_i)

over the last `window_intervals` intervals (a ring of per-interval counts, so old
traffic leaves the window), shares floored at `EPS` so an empty bin stays finite.
The usual reading: < 0.1 stable, 0.1-0.2 moderate shift, > 0.2 a shift worth a look
(the alert `RungFeatureDrift`). With fewer than `min_records` rows in the window the
value is NaN (not enough evidence; an alert on it never fires).

Bins (`scorers.lab.training.reference.bin_edges`): inner cut points at the training
deciles, or, for a feature with few distinct values (flags, small counts), the
midpoints between them. A value equal to a cut point falls in the lower bin
(`Histogram.counts`; the builder counts with it too, and a test checks the shipped
file against it).

Pure: numpy and json only; the export goes through a callback
(`stream_app.metrics.ShadowMetrics.set_psi`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

REFERENCE_FILE: Final = "reference.json"
SCORE: Final = "score"  # the score's entry among the features
EPS: Final = 1e-4
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Histogram:
    edges: tuple[float, ...]  # inner cut points, increasing; len(edges) + 1 bins
    proportions: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.proportions) != len(self.edges) + 1:
            raise ValueError("a histogram needs len(edges) + 1 proportions")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must be strictly increasing")
        if not math.isclose(sum(self.proportions), 1.0, abs_tol=1e-6):
            raise ValueError(f"proportions sum to {sum(self.proportions)}, not 1")

    def counts(self, values: npt.ArrayLike) -> npt.NDArray[np.int64]:
        x = np.asarray(values, dtype=np.float64)
        x = x[np.isfinite(x)]
        idx = np.searchsorted(np.asarray(self.edges, dtype=np.float64), x, side="left")
        return np.bincount(idx, minlength=len(self.proportions)).astype(np.int64)


@dataclass(frozen=True, slots=True)
class Reference:
    """The training distribution of one model version."""

    model_version: str
    feature_names: tuple[str, ...]  # the model's input, as in its manifest
    histograms: Mapping[str, Histogram]  # by feature name, and `SCORE`
    rows: int
    source: str = ""

    def to_json(self) -> str:
        data = {"model_version": self.model_version, "feature_names": list(self.feature_names),
                "rows": self.rows, "source": self.source,
                "histograms": {k: {"edges": list(h.edges), "proportions": list(h.proportions)}
                               for k, h in self.histograms.items()}}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Reference:
        data: dict[str, Any] = json.loads(text)
        hists = {str(k): Histogram(tuple(float(e) for e in v["edges"]),
                                   tuple(float(p) for p in v["proportions"]))
                 for k, v in data["histograms"].items()}
        unknown = set(hists) - set(data["feature_names"]) - {SCORE}
        if unknown:
            raise ValueError(f"reference bins features the model does not have: {sorted(unknown)}")
        return cls(str(data["model_version"]), tuple(data["feature_names"]), hists,
                   int(data["rows"]), str(data.get("source", "")))


def load_reference(model_dir: Path | str) -> Reference | None:
    """The model directory's reference, or None when it has none."""
    path = Path(model_dir) / REFERENCE_FILE
    if not path.is_file():
        return None
    return Reference.from_json(path.read_text())


def psi(expected: Sequence[float] | F64, actual_counts: npt.ArrayLike) -> float:
    """PSI of observed counts against expected shares (both over the same bins)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), EPS)
    counts = np.asarray(actual_counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return math.nan
    a = np.maximum(counts / total, EPS)
    return float(np.sum((a - e) * np.log(a / e)))


PsiSink = Callable[[str, str, float], None]  # (feature, model_version, psi)


class DriftMonitor:
    """Live histograms for one or more references; `export` sets each PSI.

    Not thread-safe: one thread observes and exports (the post-commit thread)."""

    def __init__(self, references: Iterable[Reference], sink: PsiSink, *,
                 window_intervals: int = 10, min_records: int = 500) -> None:
        if window_intervals < 1:
            raise ValueError("window_intervals must be at least 1")
        self.references = {r.model_version: r for r in references}
        self._sink = sink
        self.min_records = min_records
        self._ring: list[dict[tuple[str, str], npt.NDArray[np.int64]]] = [
            {} for _ in range(window_intervals)]
        self._pos = 0

    def observe_features(self, columns: Mapping[str, npt.ArrayLike]) -> None:
        """Feature values by name (any subset; rows may differ per feature). Each
        reference that bins a feature counts it."""
        for ref in self.references.values():
            for name, values in columns.items():
                hist = ref.histograms.get(name)
                if hist is not None and name != SCORE:
                    self._add((ref.model_version, name), hist.counts(values))

    def observe_scores(self, model_version: str, scores: npt.ArrayLike) -> None:
        """Scores answered by `model_version`; counted when it has a reference."""
        ref = self.references.get(model_version)
        hist = ref.histograms.get(SCORE) if ref is not None else None
        if hist is not None:
            self._add((model_version, SCORE), hist.counts(scores))

    def _add(self, key: tuple[str, str], counts: npt.NDArray[np.int64]) -> None:
        slot = self._ring[self._pos]
        have = slot.get(key)
        slot[key] = counts if have is None else have + counts

    def window(self, model_version: str, name: str) -> npt.NDArray[np.int64] | None:
        key = (model_version, name)
        parts = [slot[key] for slot in self._ring if key in slot]
        return np.sum(parts, axis=0) if parts else None

    def export(self) -> dict[tuple[str, str], float]:
        """Compute every PSI over the window, hand each to the sink, then start a new
        interval (the oldest one leaves the window)."""
        out: dict[tuple[str, str], float] = {}
        for ref in self.references.values():
            for name, hist in ref.histograms.items():
                counts = self.window(ref.model_version, name)
                enough = counts is not None and int(counts.sum()) >= self.min_records
                value = psi(hist.proportions, counts) if counts is not None and enough \
                    else math.nan
                out[(name, ref.model_version)] = value
                self._sink(name, ref.model_version, value)
        self._pos = (self._pos + 1) % len(self._ring)
        self._ring[self._pos] = {}
        return out
