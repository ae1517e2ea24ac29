"""One Model contract, run unchanged against every adapter: TorchModel (MLP and
logistic), the test fakes, and FaultyModel with its switch off."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from ladder_fakes import PRIMARY_NAMES, FnModel, write_model_dir

from scorers.faults import FaultSwitch, FaultyModel
from scorers.models.torch_model import TorchModel
from scorers.ports import Model

Factory = Callable[[Path], Model]

FACTORIES: dict[str, Factory] = {
    "torch_mlp": lambda p: TorchModel.load(write_model_dir(p, PRIMARY_NAMES), device="cpu"),
    "torch_logistic": lambda p: TorchModel.load(
        write_model_dir(p, PRIMARY_NAMES, arch_type="logistic"), device="auto"),
    "fn_fake": lambda p: FnModel("fake-1", PRIMARY_NAMES),
    "faulty_off": lambda p: FaultyModel(
        TorchModel.load(write_model_dir(p, PRIMARY_NAMES), device="cpu"), FaultSwitch()),
}


@pytest.fixture(params=sorted(FACTORIES))
def model(request: pytest.FixtureRequest, tmp_path: Path) -> Model:
    return FACTORIES[request.param](tmp_path / "model")


def test_is_a_model(model: Model) -> None:
    assert isinstance(model, Model)
    assert model.version and model.feature_names == PRIMARY_NAMES


@pytest.mark.parametrize("n", [1, 7, 300])
def test_one_probability_per_row(model: Model, n: int) -> None:
    x = np.random.default_rng(n).normal(size=(n, len(PRIMARY_NAMES))).astype(np.float32) * 100
    out = model.predict(x)
    assert out.shape == (n,) and out.dtype == np.float32
    assert np.all(np.isfinite(out)) and np.all((out >= 0) & (out <= 1))


def test_rows_are_independent(model: Model) -> None:
    x = np.random.default_rng(1).normal(size=(16, len(PRIMARY_NAMES))).astype(np.float32)
    whole = model.predict(x)
    parts = np.concatenate([model.predict(x[:5]), model.predict(x[5:])])
    np.testing.assert_allclose(whole, parts, rtol=1e-5, atol=1e-6)


def test_wrong_width_is_rejected(model: Model) -> None:
    with pytest.raises(ValueError):
        model.predict(np.zeros((3, len(PRIMARY_NAMES) + 1), dtype=np.float32))
