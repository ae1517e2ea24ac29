"""`TorchModel`: the torch adapter of `scorers.ports.Model`.

`load` reads the manifest, verifies the weights' sha256 before torch reads a
byte, loads a state_dict with `weights_only=True` into the manifest's
architecture and puts the net in eval mode on the chosen device. Any mismatch
raises `ModelIntegrityError`; the ladder then keeps the primary unavailable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from scorers.models.manifest import (
    Manifest,
    ModelIntegrityError,
    Thresholds,
    load_manifest,
    verify_weights,
)
from scorers.models.nets import build_net
from scorers.ports import FloatMatrix, FloatVector

DeviceChoice = Literal["auto", "cpu", "cuda"]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    return torch.device(device)


class TorchModel:
    def __init__(self, net: torch.nn.Module, manifest: Manifest, device: torch.device) -> None:
        self._net = net
        self.manifest = manifest
        self.device = device

    @classmethod
    def load(cls, model_dir: Path | str, device: str = "auto") -> TorchModel:
        """Never changes torch's process-wide thread count (wiring sets it once)."""
        model_dir = Path(model_dir)
        manifest = load_manifest(model_dir)
        weights = verify_weights(model_dir, manifest)
        try:
            net = build_net(manifest.arch)
            state = torch.load(weights, map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
        except (RuntimeError, ValueError, KeyError, TypeError, OSError) as exc:
            raise ModelIntegrityError(f"{model_dir}: weights do not fit the manifest: {exc}") from exc
        n_in = int(manifest.arch.get("n_in", -1))
        if n_in != len(manifest.feature_names):
            raise ModelIntegrityError(
                f"{model_dir}: arch n_in={n_in} but {len(manifest.feature_names)} feature names")
        target = resolve_device(device)
        net.eval()
        return cls(net.to(target), manifest, target)

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.manifest.feature_names

    @property
    def thresholds(self) -> Thresholds:
        return self.manifest.thresholds

    def predict(self, features: FloatMatrix) -> FloatVector:
        if features.ndim != 2 or features.shape[1] != len(self.manifest.feature_names):
            raise ValueError(f"expected (n, {len(self.manifest.feature_names)}) features, "
                             f"got {features.shape}")
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        with torch.inference_mode():
            probs = torch.sigmoid(self._net(x.to(self.device, non_blocking=True)))
            out: FloatVector = probs.to("cpu").numpy().astype(np.float32, copy=False)
        return out
