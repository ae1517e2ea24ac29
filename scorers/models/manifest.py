"""The model directory and its manifest.

A model directory holds `manifest.json` and one weights file. The manifest
names the model version, the sha256 of the weights, the ordered feature list,
the network architecture, the input normalisation and the decision thresholds.
Loading verifies the checksum before torch ever reads the weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"


class ModelIntegrityError(RuntimeError):
    """The weights do not match the manifest, or the manifest is unreadable."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    review: float  # score at or above which a human looks at the transaction
    block: float  # score at or above which the transaction is declined
    min_confidence: float = 0.0  # rows answered with less go down the ladder


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str  # "primary" or "fallback"
    version: str
    weights_file: str
    sha256: str
    feature_names: tuple[str, ...]
    arch: dict[str, Any]
    thresholds: Thresholds
    norm_mean: tuple[float, ...] = ()
    norm_std: tuple[float, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    created_by: str = "rung train"

    def to_json(self) -> str:
        data = asdict(self)
        data["feature_names"] = list(self.feature_names)
        data["norm_mean"] = list(self.norm_mean)
        data["norm_std"] = list(self.norm_std)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(model_dir: Path) -> Manifest:
    path = Path(model_dir) / MANIFEST_FILE
    try:
        data = json.loads(path.read_text())
        return Manifest(
            name=str(data["name"]),
            version=str(data["version"]),
            weights_file=str(data["weights_file"]),
            sha256=str(data["sha256"]),
            feature_names=tuple(data["feature_names"]),
            arch=dict(data["arch"]),
            thresholds=Thresholds(**data["thresholds"]),
            norm_mean=tuple(float(v) for v in data.get("norm_mean", ())),
            norm_std=tuple(float(v) for v in data.get("norm_std", ())),
            metrics={str(k): float(v) for k, v in data.get("metrics", {}).items()},
            created_by=str(data.get("created_by", "")),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelIntegrityError(f"unreadable manifest {path}: {exc}") from exc


def verify_weights(model_dir: Path, manifest: Manifest) -> Path:
    """Return the weights path after checking its sha256 against the manifest."""
    weights = Path(model_dir) / manifest.weights_file
    if not weights.is_file():
        raise ModelIntegrityError(f"weights file missing: {weights}")
    actual = sha256_file(weights)
    if actual != manifest.sha256:
        raise ModelIntegrityError(
            f"checksum mismatch for {weights.name}: manifest {manifest.sha256[:12]}…, "
            f"file {actual[:12]}…"
        )
    return weights


def write_manifest(model_dir: Path, manifest: Manifest) -> None:
    (Path(model_dir) / MANIFEST_FILE).write_text(manifest.to_json())
