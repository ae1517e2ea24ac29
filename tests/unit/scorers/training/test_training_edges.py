"""Step edges and the nets that use them: ensembles, step indicators, state_dict round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scorers.lab.training.edges import feature_edges, step_edges
from scorers.lab.training.train import TrainSpec, first_mlp, fit
from scorers.models.nets import MLP, Ensemble, build_net


def test_the_edge_separates_a_pure_threshold_exactly() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 300, size=5000).astype(np.float32)
    y = (x > 220.0).astype(np.float32)
    edges = feature_edges(x, y, n_edges=3)
    assert edges.shape == (3,) and np.all(np.diff(edges[np.isfinite(edges)]) > 0)
    first = edges[0]
    assert x[x <= 220.0].max() < first <= x[x > 220.0].min()
    assert np.array_equal(x >= first, y > 0)
    assert np.all(np.isinf(edges[1:]))  # both children are pure: nothing left to split


def test_uninformative_or_constant_columns_get_no_edges() -> None:
    y = np.r_[np.zeros(500), np.ones(500)].astype(np.float32)
    assert np.all(np.isinf(feature_edges(np.ones(1000, dtype=np.float32), y, 2)))
    assert np.all(np.isinf(feature_edges(np.zeros(1000, dtype=np.float32), y, 2)))


def test_leaves_respect_min_leaf() -> None:
    x = np.arange(100, dtype=np.float32)
    y = (x >= 95).astype(np.float32)  # the pure cut leaves 5 rows on the right
    assert feature_edges(x, y, 1, min_leaf=10)[0] <= 89.5  # the pure cut is not allowed
    assert feature_edges(x, y, 1, min_leaf=5)[0] == pytest.approx(94.5)


def test_step_edges_is_one_row_per_feature_and_checks_shapes() -> None:
    x = np.stack([np.arange(200), np.arange(200)[::-1]], axis=1).astype(np.float32)
    y = (np.arange(200) >= 150).astype(np.float32)
    edges = step_edges(x, y, 2)
    assert edges.shape == (2, 2)
    assert edges[0, 0] == pytest.approx(149.5) and edges[1, 0] == pytest.approx(49.5)
    with pytest.raises(ValueError):
        step_edges(x, y[:10], 2)


def test_step_indicators_reach_the_net_and_survive_a_state_dict_round_trip() -> None:
    arch = {"type": "mlp", "n_in": 2, "hidden": [4], "n_steps": 1}
    net = build_net(arch)
    assert isinstance(net, MLP)
    net.edges.copy_(torch.tensor([[1.0], [float("inf")]]))
    x = torch.tensor([[0.5, 0.0], [1.5, 0.0]])
    out_before = net(x)
    again = build_net(arch)
    again.load_state_dict(net.state_dict(), strict=True)
    torch.testing.assert_close(again(x), out_before)
    with torch.no_grad():  # only the first step indicator (input 0 >= 1.0) drives the logit
        first = net.body[0]
        assert isinstance(first, torch.nn.Linear) and first.in_features == 4
        first.weight.zero_()
        first.weight[:, 2] = 1.0
    logits = net(x)
    assert logits[1] != logits[0]


def test_ensemble_logit_is_the_mean_of_its_members() -> None:
    member = {"type": "mlp", "n_in": 3, "hidden": [5]}
    net = build_net({"type": "ensemble", "n_in": 3, "n_members": 3, "member": member})
    assert isinstance(net, Ensemble)
    x = torch.randn(7, 3)
    expected = torch.stack([m(x) for m in net.members]).mean(dim=0)
    torch.testing.assert_close(net(x), expected)
    with pytest.raises(ValueError):
        build_net({"type": "ensemble", "n_in": 4, "n_members": 2, "member": member})
    with pytest.raises(ValueError):
        build_net({"type": "ensemble", "n_in": 3, "n_members": 0, "member": member})


def test_ensemble_fit_is_deterministic_and_members_differ() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.normal(size=400) > 1.0).astype(np.float32)
    member = {"type": "mlp", "n_in": 3, "hidden": [8], "n_steps": 2}
    spec = TrainSpec("primary", {"type": "ensemble", "n_in": 3, "n_members": 2,
                                 "member": member}, epochs=3, batch_size=32, lr=1e-2)
    (a, ap_a), (b, ap_b) = (fit(spec, x[:300], y[:300], x[300:], y[300:], 3, torch.device("cpu"))
                            for _ in range(2))
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[key])
    assert ap_a == ap_b and ap_a > 0.8
    assert isinstance(a, Ensemble)
    w0, w1 = (first_mlp(m).state_dict()["body.0.weight"] for m in a.members)
    assert not torch.equal(w0, w1)
    assert np.isfinite(first_mlp(a).edges[0, 0].item())  # edges learned on column 0
