"""Network definitions shared by training and serving.

The manifest's `arch` dict names one of these builders and its arguments, so
the serving side rebuilds exactly the module that training saved.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class MLP(nn.Module):
    """Normalise, then a ReLU MLP with one logit out."""

    mean: torch.Tensor  # buffers, set from the training data
    std: torch.Tensor
    log_mask: torch.Tensor

    def __init__(self, n_in: int, hidden: list[int], dropout: float = 0.0,
                 log1p_inputs: list[int] | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("std", torch.ones(n_in))
        log_mask = torch.zeros(n_in, dtype=torch.bool)
        log_mask[list(log1p_inputs or [])] = True
        # rebuilt from the arch, not saved: state_dicts stay {mean, std, body.*}
        self.register_buffer("log_mask", log_mask, persistent=False)
        layers: list[nn.Module] = []
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, 1))
        self.body = nn.Sequential(*layers)

    def transform_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """log1p of the heavy-tailed inputs named in the arch (negative values clamp to 0)."""
        return torch.where(self.log_mask, torch.log1p(x.clamp_min(0.0)), x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (self.transform_inputs(x) - self.mean) / self.std
        logits: torch.Tensor = self.body(z).squeeze(-1)
        return logits


class Logistic(MLP):
    """Logistic regression: an MLP with no hidden layer."""

    def __init__(self, n_in: int) -> None:
        super().__init__(n_in, hidden=[])


def build_net(arch: dict[str, Any]) -> nn.Module:
    kind = arch.get("type")
    if kind == "mlp":
        return MLP(int(arch["n_in"]), [int(h) for h in arch["hidden"]],
                   float(arch.get("dropout", 0.0)),
                   [int(i) for i in arch.get("log1p_inputs", [])])
    if kind == "logistic":
        return Logistic(int(arch["n_in"]))
    raise ValueError(f"unknown architecture type: {kind!r}")
