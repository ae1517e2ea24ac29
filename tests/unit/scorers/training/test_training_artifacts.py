"""The committed model dirs match their manifests; training is deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from scorers.features import FALLBACK_FEATURE_NAMES, PRIMARY_FEATURE_NAMES
from scorers.lab.training.evaluate import load_model
from scorers.lab.training.train import (
    TrainSpec,
    calibrate_thresholds,
    first_mlp,
    fit,
    predict,
    save_model_dir,
)
from scorers.models.defaults import FALLBACK_DIR, PRIMARY_DIR
from scorers.models.manifest import ModelIntegrityError, load_manifest, verify_weights


@pytest.mark.parametrize(("model_dir", "names"), [(PRIMARY_DIR, PRIMARY_FEATURE_NAMES),
                                                  (FALLBACK_DIR, FALLBACK_FEATURE_NAMES)])
def test_committed_artifacts_load_with_checksum_verified(model_dir: Path,
                                                         names: tuple[str, ...]) -> None:
    manifest, net = load_model(model_dir)
    assert manifest.feature_names == names
    assert manifest.arch["n_in"] == len(names)
    assert manifest.version.endswith(manifest.sha256[:12])
    assert 0 < manifest.thresholds.review <= manifest.thresholds.block <= 1
    assert (model_dir / manifest.weights_file).stat().st_size < 2_000_000
    np.testing.assert_allclose(first_mlp(net).mean.numpy(), manifest.norm_mean, rtol=1e-5,
                               atol=1e-5)
    scores = predict(net, np.zeros((3, len(names)), dtype=np.float32))
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    spec = TrainSpec("fallback", {"type": "mlp", "n_in": 2, "hidden": [4]}, epochs=1)
    net, _ = _tiny_fit(spec, seed=0)
    manifest = save_model_dir(tmp_path / "m", spec, net, ("a", "b"),
                              calibrate_thresholds(np.array([0, 1] * 20, dtype=np.float32),
                                                   np.linspace(0, 1, 40, dtype=np.float32)), {})
    verify_weights(tmp_path / "m", load_manifest(tmp_path / "m"))
    with (tmp_path / "m" / manifest.weights_file).open("ab") as fh:
        fh.write(b"x")
    with pytest.raises(ModelIntegrityError):
        verify_weights(tmp_path / "m", manifest)


def _tiny_fit(spec: TrainSpec, seed: int) -> tuple[torch.nn.Module, float]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, spec.arch["n_in"])).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.normal(size=400) > 1.0).astype(np.float32)
    return fit(spec, x[:300], y[:300], x[300:], y[300:], seed, torch.device("cpu"))


def test_training_is_deterministic_and_learns() -> None:
    spec = TrainSpec("primary", {"type": "mlp", "n_in": 3, "hidden": [8]}, epochs=5,
                     batch_size=32, lr=1e-2)
    (a, ap_a), (b, ap_b) = _tiny_fit(spec, seed=4), _tiny_fit(spec, seed=4)
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[key])
    assert ap_a == ap_b and ap_a > 0.8


def test_thresholds_reach_their_precision() -> None:
    y = np.r_[np.zeros(900), np.ones(100)].astype(np.float32)
    s = np.r_[np.linspace(0, 0.6, 900), np.linspace(0.5, 1.0, 100)].astype(np.float32)
    t = calibrate_thresholds(y, s)
    for threshold, target in ((t.review, 0.3), (t.block, 0.9)):
        assert y[s >= threshold].mean() >= target
    assert t.review < t.block
