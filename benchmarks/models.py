"""The model directories the benchmarks score with.

The committed artifacts (`scorers/artifacts/primary|fallback`) when they load;
otherwise untrained stand-ins with the same architectures (`rung train`'s
specs), written into the run directory. Speed depends on the architecture, not
on the weights, so the numbers hold; the JSON says which were used.
"""

from __future__ import annotations

from pathlib import Path

import torch

from scorers.features import FALLBACK_FEATURE_NAMES, PRIMARY_FEATURE_NAMES
from scorers.lab.training.train import FALLBACK_SPEC, PRIMARY_SPEC, TrainSpec, save_model_dir
from scorers.models.defaults import FALLBACK_DIR, PRIMARY_DIR
from scorers.models.manifest import ModelIntegrityError, Thresholds
from scorers.models.nets import build_net
from scorers.models.torch_model import TorchModel

# High thresholds, so an untrained net's ~0.5 scores do not send half the
# records to the review topic (a trained model reviews about 1%).
STAND_IN_THRESHOLDS = Thresholds(review=0.9, block=0.99)


def _loads(model_dir: Path) -> bool:
    try:
        TorchModel.load(model_dir, device="cpu")
        return True
    except (ModelIntegrityError, OSError, ValueError):
        return False


def _stand_in(spec: TrainSpec, names: tuple[str, ...], out_dir: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    net = build_net(spec.arch)
    net.eval()
    model_dir = out_dir / spec.name
    save_model_dir(model_dir, spec, net, names, STAND_IN_THRESHOLDS, {"stand_in": 1.0})
    return model_dir


def model_dirs(out_dir: Path) -> tuple[Path, Path, str]:
    """(primary_dir, fallback_dir, "artifacts" | "stand-in")."""
    if _loads(PRIMARY_DIR) and _loads(FALLBACK_DIR):
        return PRIMARY_DIR, FALLBACK_DIR, "artifacts"
    return (_stand_in(PRIMARY_SPEC, PRIMARY_FEATURE_NAMES, out_dir, 1),
            _stand_in(FALLBACK_SPEC, FALLBACK_FEATURE_NAMES, out_dir, 2), "stand-in")
