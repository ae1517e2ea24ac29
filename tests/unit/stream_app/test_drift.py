"""PSI, the live histograms' window, and the shipped training reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from scorers.lab.training.reference import DRIFT_FEATURES, bin_edges, histogram
from scorers.models.defaults import PRIMARY_DIR
from scorers.models.manifest import load_manifest
from stream_app.quality.drift import (
    SCORE,
    DriftMonitor,
    Histogram,
    Reference,
    load_reference,
    psi,
)


def test_psi_is_zero_for_the_reference_itself_and_grows_with_a_shift() -> None:
    shares = [0.25, 0.25, 0.25, 0.25]
    assert psi(shares, [250, 250, 250, 250]) == pytest.approx(0.0)
    # half the mass moves from the first bin to the last: (0.5-0.25)ln2 + (0-0.25)ln(eps/.25)
    shifted = psi(shares, [0, 250, 250, 500])
    expected = (0.5 - 0.25) * math.log(0.5 / 0.25) + (1e-4 - 0.25) * math.log(1e-4 / 0.25)
    assert shifted == pytest.approx(expected, rel=1e-6)
    assert shifted > 0.2
    assert math.isnan(psi(shares, [0, 0, 0, 0]))


def test_a_value_on_a_cut_point_falls_in_the_lower_bin_online_and_offline() -> None:
    h = Histogram((1.0, 2.0), (0.2, 0.3, 0.5))
    assert h.counts([0.5, 1.0, 1.5, 2.0, 2.5, np.nan, np.inf]).tolist() == [2, 2, 1]
    values = np.array([0.0, 1.0, 1.0, 2.0, 2.0, 2.0])
    built = histogram(values)
    assert built["edges"] == [0.5, 1.5]
    assert built["proportions"] == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    online = Histogram(tuple(built["edges"]), tuple(built["proportions"])).counts(values)
    assert (online / online.sum()).tolist() == pytest.approx(built["proportions"])


def test_quantile_bins_of_a_continuous_feature_hold_about_a_tenth_each() -> None:
    x = np.random.default_rng(0).lognormal(3.0, 1.0, 20_000)
    edges = bin_edges(x)
    assert len(edges) == 9
    counts = Histogram(tuple(edges), (1.0,) + (0.0,) * 9).counts(x)
    assert counts.min() > 1_900 and counts.max() < 2_100


def _monitor(sink: list[tuple[str, str, float]], **kw: int) -> DriftMonitor:
    ref = Reference("v1", ("amount",), {"amount": Histogram((10.0,), (0.5, 0.5)),
                                        SCORE: Histogram((0.5,), (0.9, 0.1))}, rows=100)
    return DriftMonitor([ref], lambda f, v, p: sink.append((f, v, p)), **kw)


def test_monitor_exports_psi_per_feature_and_version_over_a_window_of_intervals() -> None:
    sink: list[tuple[str, str, float]] = []
    mon = _monitor(sink, window_intervals=2, min_records=10)
    mon.observe_features({"amount": np.array([5.0] * 50 + [50.0] * 50), "other": np.ones(3)})
    mon.observe_scores("v1", np.array([0.1] * 90 + [0.9] * 10))
    mon.observe_scores("v-unknown", np.array([0.9] * 100))  # no reference: ignored
    out = mon.export()
    assert out[("amount", "v1")] == pytest.approx(0.0)
    assert out[(SCORE, "v1")] == pytest.approx(0.0)
    assert {(f, v) for f, v, _ in sink} == {("amount", "v1"), (SCORE, "v1")}
    # the next interval is all high amounts: the window holds both intervals
    mon.observe_features({"amount": np.array([50.0] * 100)})
    both = mon.export()[("amount", "v1")]
    assert both == pytest.approx(psi([0.5, 0.5], [50, 150]))
    # one more interval: the first one left the window
    mon.observe_features({"amount": np.array([50.0] * 100)})
    assert mon.export()[("amount", "v1")] == pytest.approx(psi([0.5, 0.5], [0, 200]))
    assert mon.export()[("amount", "v1")] > 0.2  # still the last interval's 100 rows


def test_monitor_reports_nan_without_enough_rows() -> None:
    sink: list[tuple[str, str, float]] = []
    mon = _monitor(sink, min_records=500)
    mon.observe_features({"amount": np.array([50.0] * 100)})
    assert math.isnan(mon.export()[("amount", "v1")])


def test_a_reference_must_bin_only_features_the_model_has() -> None:
    text = Reference("v", ("a",), {"b": Histogram((), (1.0,))}, 1).to_json()
    with pytest.raises(ValueError, match="does not have"):
        Reference.from_json(text)
    with pytest.raises(ValueError):
        Histogram((1.0,), (0.5, 0.6))


def test_the_shipped_primary_reference_matches_its_manifest() -> None:
    manifest = load_manifest(PRIMARY_DIR)
    ref = load_reference(PRIMARY_DIR)
    assert ref is not None
    assert ref.model_version == manifest.version
    assert ref.feature_names == manifest.feature_names
    assert set(ref.histograms) == {*DRIFT_FEATURES, SCORE}
    assert ref.rows > 10_000
    for name, h in ref.histograms.items():
        assert name == SCORE or name in manifest.feature_names
        assert sum(h.proportions) == pytest.approx(1.0)
        assert min(h.proportions) > 0.0, name  # every bin saw training rows
    # round trip through the file format
    raw = json.loads((PRIMARY_DIR / "reference.json").read_text())
    assert Reference.from_json(json.dumps(raw)) == ref
