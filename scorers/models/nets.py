"""Network definitions shared by training and serving.

The manifest's `arch` dict names one of these builders and its arguments, so
the serving side rebuilds exactly the module that training saved.
"""

from __future__ import annotations

import itertools
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

    def body_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the body sees: normalised inputs, then the step indicators."""
        z = (self.transform_inputs(x) - self.mean) / self.std
        if self.n_steps:
            steps = (x.unsqueeze(-1) >= self.edges).flatten(1).to(z.dtype)
            z = torch.cat([z, steps], dim=1)
        return z

    def input_buffers(self) -> tuple[torch.Tensor, ...]:
        """The buffers `body_input` reads (its whole state besides `n_steps`)."""
        return (self.mean, self.std, self.log_mask) + ((self.edges,) if self.n_steps else ())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.body(self.body_input(x)).squeeze(-1)
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
        self._shared_key: tuple[tuple[int, int], ...] | None = None
        self._shared = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self._mlp_members_sharing_inputs()
        if shared:
            # members normalised from the same training data: one body input for all
            # (the same operations on the same values, so the same logits, once not 5x)
            z = shared[0].body_input(x)
            return torch.stack([m.body(z).squeeze(-1) for m in shared]).mean(dim=0)
        return torch.stack([m(x) for m in self.members]).mean(dim=0)

    def _mlp_members_sharing_inputs(self) -> list[MLP]:
        """The members, when every one is an `MLP` with equal input buffers, else [];
        decided again whenever a buffer is replaced or changed in place (its version
        moves), or on every call for buffers that keep no version (inference tensors)."""
        members = [m for m in self.members if type(m) is MLP]
        if len(members) != len(self.members):
            return []
        buffers = [m.input_buffers() for m in members]
        try:
            key: tuple[tuple[int, int], ...] | None = tuple(
                (b.data_ptr(), b._version) for bs in buffers for b in bs)
        except RuntimeError:  # "Inference tensors do not track version counter"
            key = None
        if key is None or key != self._shared_key:
            first = buffers[0]
            self._shared = all(
                m.n_steps == members[0].n_steps and len(bs) == len(first)
                and all(torch.equal(a, b) for a, b in zip(bs, first, strict=True))
                for m, bs in zip(members, buffers, strict=True))
            self._shared_key = key
        return members if self._shared else []


def flush_subnormals(module: nn.Module) -> int:
    """Set subnormal parameters and buffers (0 < |w| < float32's smallest normal) to 0;
    return how many there were.

    Weight decay leaves the weights of inputs that rarely fire decaying towards zero,
    down into the subnormal range, where x86 multiplies at a small fraction of their
    normal speed: a fifth of the committed primary's first-layer weights made its
    forward ~2.5x slower. A subnormal times any input is below float32's resolution
    of a sum holding a normal term, so the logits do not change."""
    flushed = 0
    with torch.no_grad():
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            if not tensor.is_floating_point():
                continue
            tiny = torch.finfo(tensor.dtype).tiny
            mask = (tensor.abs() < tiny) & (tensor != 0)
            count = int(mask.sum())
            if count:
                tensor.masked_fill_(mask, 0.0)
                flushed += count
    return flushed


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
