from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ladder_fakes import EVENT_NAMES, PRIMARY_NAMES, build, make_tx, write_model_dir

from scorers.breaker import State
from scorers.clock import FakeClock
from scorers.deadline import Deadline
from scorers.models.manifest import ModelIntegrityError
from scorers.models.nets import build_net
from scorers.models.torch_model import TorchModel, resolve_device
from topics.schemas import Tier


def test_loads_in_eval_mode_and_matches_the_net(tmp_path: Path) -> None:
    d = write_model_dir(tmp_path / "m", PRIMARY_NAMES, version="p-7")
    model = TorchModel.load(d, device="cpu")
    assert model.version == "p-7" and model.thresholds.block == 0.9
    net = build_net({"type": "mlp", "n_in": len(PRIMARY_NAMES), "hidden": [8]})
    net.load_state_dict(torch.load(d / "weights.pt", weights_only=True))
    x = np.ones((3, len(PRIMARY_NAMES)), dtype=np.float32)
    expected = torch.sigmoid(net.eval()(torch.from_numpy(x))).detach().numpy()
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-6)


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError):
        resolve_device("tpu")


def test_corrupted_weights_are_refused(tmp_path: Path) -> None:
    d = write_model_dir(tmp_path / "m", PRIMARY_NAMES)
    with (d / "weights.pt").open("ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(ModelIntegrityError, match="checksum"):
        TorchModel.load(d, device="cpu")


def test_weights_not_matching_the_arch_are_refused(tmp_path: Path) -> None:
    d = write_model_dir(tmp_path / "m", PRIMARY_NAMES)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["arch"]["hidden"] = [16]
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelIntegrityError, match="do not fit"):
        TorchModel.load(d, device="cpu")


def test_missing_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError):
        TorchModel.load(tmp_path, device="cpu")


def test_ladder_with_corrupted_primary_serves_from_the_fallback(tmp_path: Path) -> None:
    primary_dir = write_model_dir(tmp_path / "p", PRIMARY_NAMES)
    (primary_dir / "weights.pt").write_bytes(b"not a torch file")
    fallback_dir = write_model_dir(tmp_path / "f", EVENT_NAMES, version="f-9")
    clock = FakeClock()
    ladder = build(clock, primary=primary_dir, fallback=fallback_dir)
    assert ladder.unavailable["primary"].startswith("integrity")
    assert ladder.breakers["primary"].state is State.FORCED_OPEN
    scores = ladder.score_batch([make_tx(i) for i in range(5)], Deadline.after(clock, 0.05))
    assert {(s.tier, s.model_version) for s in scores} == {(Tier.FALLBACK, "f-9")}
    assert {s.reasons for s in scores} == {("primary_unavailable",)}


def test_ladder_loads_good_directories(tmp_path: Path) -> None:
    clock = FakeClock()
    ladder = build(clock, primary=write_model_dir(tmp_path / "p", PRIMARY_NAMES),
                   fallback=write_model_dir(tmp_path / "f", EVENT_NAMES, version="f-9"))
    scores = ladder.score_batch([make_tx(i) for i in range(5)], Deadline.after(clock, 0.05))
    assert {s.tier for s in scores} <= {Tier.PRIMARY, Tier.FALLBACK}
    assert "primary" not in ladder.unavailable
