"""The two shortcuts of the serving nets must not change a single logit: subnormal
weights flushed at load, and an ensemble's members sharing one body input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from scorers.models.manifest import load_manifest
from scorers.models.nets import MLP, Ensemble, build_net, flush_subnormals
from scorers.models.torch_model import TorchModel

ARCH: dict[str, Any] = {"type": "ensemble", "n_in": 6, "n_members": 3,
                        "member": {"type": "mlp", "n_in": 6, "hidden": [16, 8], "n_steps": 2,
                                   "log1p_inputs": [0, 3]}}
PRIMARY_DIR = Path(__file__).resolve().parents[3] / "scorers" / "artifacts" / "primary"
TINY = torch.finfo(torch.float32).tiny


def _ensemble(seed: int = 0) -> Ensemble:
    torch.manual_seed(seed)
    net = build_net(ARCH)
    assert isinstance(net, Ensemble)
    mean, std = torch.rand(6), torch.rand(6) + 0.5
    edges = torch.sort(torch.rand(6, 2) * 3, dim=1).values
    for m in net.members:
        assert isinstance(m, MLP)
        m.mean.copy_(mean)
        m.std.copy_(std)
        m.edges.copy_(edges)
    return net.eval()


def _member_by_member(net: Ensemble, x: torch.Tensor) -> torch.Tensor:
    return torch.stack([m(x) for m in net.members]).mean(dim=0)


def test_members_with_equal_inputs_give_the_same_logits_through_one_body_input() -> None:
    net = _ensemble()
    x = torch.rand(64, 6) * 4 - 0.5
    with torch.inference_mode():
        assert net._mlp_members_sharing_inputs()
        assert torch.equal(net(x), _member_by_member(net, x))


def test_a_member_whose_inputs_change_is_noticed() -> None:
    net = _ensemble()
    x = torch.rand(64, 6) * 4
    with torch.inference_mode():
        net(x)  # decided once: shared
        second = net.members[1]
        assert isinstance(second, MLP)
        saved = second.mean.clone()
        second.mean.add_(0.25)  # in place: the buffer's version moves
        assert not net._mlp_members_sharing_inputs()
        assert torch.equal(net(x), _member_by_member(net, x))
        second.mean.copy_(saved)
        assert net._mlp_members_sharing_inputs()
        second.edges = second.edges + 1.0  # replaced: a new tensor
        assert not net._mlp_members_sharing_inputs()
        assert torch.equal(net(x), _member_by_member(net, x))


def test_gradients_flow_through_the_shared_input() -> None:
    net = _ensemble().train()
    x = torch.rand(16, 6, requires_grad=True)
    net(x).sum().backward()
    grads = [m.body[0].weight.grad for m in net.members]  # type: ignore[index]
    assert all(g is not None and bool(torch.any(g != 0)) for g in grads)
    assert x.grad is not None


def test_subnormal_weights_are_flushed_and_the_logits_stay_the_same() -> None:
    net = _ensemble()
    first = net.members[0].body[0]  # type: ignore[index]
    with torch.no_grad():
        first.weight[:, :4] = TINY / 7  # subnormal
        first.weight[0, 4] = -TINY / 3
        first.bias[0] = TINY  # the smallest normal: kept
    x = torch.rand(128, 6) * 4
    with torch.inference_mode():
        before = net(x).clone()
    assert flush_subnormals(net) == 16 * 4 + 1
    assert torch.count_nonzero(first.weight[:, :4]) == 0 and first.weight[0, 4] == 0
    assert first.bias[0] == TINY
    with torch.inference_mode():
        assert torch.equal(net(x), before)
    assert flush_subnormals(net) == 0  # nothing left


def test_the_committed_primary_loads_flushed_and_scores_as_its_file_says() -> None:
    manifest = load_manifest(PRIMARY_DIR)
    raw = build_net(manifest.arch)
    state = torch.load(PRIMARY_DIR / "weights.pt", weights_only=True)
    raw.load_state_dict(state)
    raw.eval()
    subnormal = sum(int(((t.abs() < TINY) & (t != 0)).sum()) for t in state.values()
                    if t.is_floating_point())
    model = TorchModel.load(PRIMARY_DIR, device="cpu")
    assert model.subnormals_flushed == subnormal
    rng = np.random.default_rng(3)
    x = (rng.lognormal(1.0, 1.5, size=(512, len(model.feature_names)))
         * rng.integers(0, 2, size=(512, len(model.feature_names)))).astype(np.float32)
    with torch.inference_mode():  # the file's weights, member by member, no shortcut
        expected = torch.sigmoid(torch.stack(
            [m(torch.from_numpy(x)) for m in raw.members]).mean(dim=0)).numpy()  # type: ignore[attr-defined]
    assert np.array_equal(model.predict(x), expected)
