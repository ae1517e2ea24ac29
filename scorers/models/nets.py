"""Network definitions shared by training and serving.

The manifest's `arch` dict names one of these builders and its arguments, so
the serving side rebuilds exactly the module that training saved.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class MLP(nn.Module):
    """Normalise, then a ReLU MLP with one logit out.

    With `n_steps > 0` the net also sees, for every input, `n_steps` 0/1 indicators
    `x >= edge` of the raw value; the `edges` buffer (n_in, n_steps; +inf = unused) is
    set from the training data, like `mean` and `std`, and saved in the state_dict.
    """

    mean: torch.Tensor  # buffers, set from the training data
    std: torch.Tensor
    log_mask: torch.Tensor
    edges: torch.Tensor

    def __init__(self, n_in: int, hidden: list[int], dropout: float = 0.0,
                 log1p_inputs: list[int] | None = None, n_steps: int = 0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("std", torch.ones(n_in))
        log_mask = torch.zeros(n_in, dtype=torch.bool)
        log_mask[list(log1p_inputs or [])] = True
        # rebuilt from the arch, not saved: state_dicts stay {mean, std, body.*}
        self.register_buffer("log_mask", log_mask, persistent=False)
        self.n_steps = n_steps
        if n_steps:
            self.register_buffer("edges", torch.full((n_in, n_steps), float("inf")))
        layers: list[nn.Module] = []
        width = n_in * (1 + n_steps)
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
        if self.n_steps:
            steps = (x.unsqueeze(-1) >= self.edges).flatten(1).to(z.dtype)
            z = torch.cat([z, steps], dim=1)
        logits: torch.Tensor = self.body(z).squeeze(-1)
        return logits


class Logistic(MLP):
    """Logistic regression: an MLP with no hidden layer."""

    def __init__(self, n_in: int) -> None:
        super().__init__(n_in, hidden=[])


class Ensemble(nn.Module):
    """`n_members` nets of one `member` arch, trained from different seeds; the logit
    is the mean of their logits (so serving's sigmoid gives the ensemble's score)."""

    def __init__(self, member: dict[str, Any], n_members: int) -> None:
        super().__init__()
        if n_members < 1:
            raise ValueError(f"an ensemble needs at least one member, got {n_members}")
        self.members = nn.ModuleList(build_net(member) for _ in range(n_members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


def build_net(arch: dict[str, Any]) -> nn.Module:
    """The module an arch names: "mlp" (optionally with `log1p_inputs`, `n_steps`),
    "logistic", or "ensemble" (`member`: an arch, `n_members`; `n_in` repeated)."""
    kind = arch.get("type")
    if kind == "ensemble":
        member = dict(arch["member"])
        if int(member["n_in"]) != int(arch["n_in"]):
            raise ValueError("ensemble n_in differs from its member's")
        return Ensemble(member, int(arch["n_members"]))
    if kind == "mlp":
        return MLP(int(arch["n_in"]), [int(h) for h in arch["hidden"]],
                   float(arch.get("dropout", 0.0)),
                   [int(i) for i in arch.get("log1p_inputs", [])],
                   int(arch.get("n_steps", 0)))
    if kind == "logistic":
        return Logistic(int(arch["n_in"]))
    raise ValueError(f"unknown architecture type: {kind!r}")
