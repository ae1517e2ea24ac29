"""The one way to load a model: a directory (or a model given as-is) in, the model
or the reason it is unavailable out. Never raises for a bad artifact: integrity
(unreadable manifest, checksum mismatch, weights that do not fit) and feature
mismatch become a reason, and the tier is then unavailable (breaker forced open).
Torch's process-wide thread count is not touched here: wiring sets it once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scorers.models.manifest import ModelIntegrityError
from scorers.ports import Model


@dataclass(frozen=True, slots=True)
class Loaded:
    model: Model | None
    reason: str = ""  # why `model` is unusable ("" when it is usable)

    @property
    def usable(self) -> Model | None:
        return None if self.reason else self.model


def load_model(source: Model | Path | str | None, *, device: str = "cpu",
               expected_features: Sequence[str] | None = None, role: str = "model") -> Loaded:
    if source is None:
        return Loaded(None, "not_configured")
    model: Model
    if isinstance(source, Path | str):
        from scorers.models.torch_model import TorchModel  # torch only when a directory is given

        try:
            model = TorchModel.load(source, device=device)
        except ModelIntegrityError as exc:
            return Loaded(None, f"integrity: {exc}")
    else:
        model = source
    if expected_features is not None and tuple(model.feature_names) != tuple(expected_features):
        return Loaded(model, f"feature_mismatch: {role} expects other features")
    return Loaded(model)
