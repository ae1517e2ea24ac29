"""Explanations: attribution maths, the reason encoding, and the ladder's explain step
(reviewed records only, bounded, deadline skip, unavailable and failing models)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ladder_fakes import (
    EVENT_NAMES,
    PRIMARY_NAMES,
    RecordingListener,
    build,
    make_tx,
    write_model_dir,
)

from scorers import explain as explain_mod
from scorers.clock import FakeClock
from scorers.deadline import Deadline
from scorers.explain import (
    ExplainConfig,
    attribute,
    parse_contribution,
    top_reasons,
)
from scorers.listeners import LadderListener
from scorers.models.nets import MLP, build_net
from scorers.models.torch_model import TorchModel
from scorers.policy import PolicyHolder, parse_policy
from topics.schemas import Score, Tier

ALL_REVIEW = PolicyHolder(parse_policy({
    "version": "review-all",
    "thresholds": {"tiers": {"primary": {"review": 0.0, "block": 1.0},
                             "fallback": {"review": 0.0, "block": 1.0}}}}))


def trained_like(net: torch.nn.Module, n_in: int, seed: int = 0) -> torch.nn.Module:
    """Random weights and non-trivial normalisation buffers (as training would set)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, MLP):
            m.mean.copy_(torch.rand(n_in, generator=g))
            m.std.copy_(0.5 + torch.rand(n_in, generator=g))
            if m.n_steps:
                m.edges.copy_(torch.rand(n_in, m.n_steps, generator=g).sort(dim=1).values * 3)
    return net.eval()


def logits_minus_reference(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    members = [net] if isinstance(net, MLP) else list(net.members)  # type: ignore[arg-type]
    xt = torch.as_tensor(x)
    with torch.no_grad():
        ref = np.mean([m.body(explain_mod._normalised(m, xt)[1].unsqueeze(0)).item()
                       for m in members])
        out: np.ndarray = net(xt).numpy() - ref
    return out


def test_gradient_x_input_is_exact_for_a_linear_model() -> None:
    net = trained_like(build_net({"type": "logistic", "n_in": 5}), 5)
    assert isinstance(net, MLP)
    x = np.random.default_rng(1).normal(size=(32, 5)).astype(np.float32)
    c = attribute(net, x, "gxi")
    assert c.shape == (32, 5)
    np.testing.assert_allclose(c.sum(axis=1), logits_minus_reference(net, x), rtol=1e-4, atol=1e-4)
    linear = net.body[0]
    assert isinstance(linear, torch.nn.Linear)
    w = linear.weight.detach().numpy()[0] / net.std.numpy()
    want: np.ndarray = w * (x - net.mean.numpy())
    np.testing.assert_allclose(c, want, rtol=1e-4, atol=1e-5)


def test_integrated_gradients_add_up_for_an_ensemble_with_steps_and_log_inputs() -> None:
    member = {"type": "mlp", "n_in": 6, "hidden": [16, 8], "log1p_inputs": [0, 3], "n_steps": 3}
    net = trained_like(build_net({"type": "ensemble", "n_in": 6, "member": member,
                                  "n_members": 3}), 6)
    x = np.abs(np.random.default_rng(2).normal(size=(40, 6))).astype(np.float32) * 2
    target = logits_minus_reference(net, x)
    err = [np.abs(attribute(net, x, "ig", steps).sum(axis=1) - target).max()
           for steps in (2, 64)]
    assert err[1] < 0.02 * max(1.0, float(np.abs(target).max()))
    assert err[1] < err[0]
    gxi = attribute(net, x, "gxi")
    assert gxi.shape == (40, 6) and np.isfinite(gxi).all()


@pytest.mark.parametrize("method", ["ig", "gxi"])
@pytest.mark.parametrize("arch", [
    {"type": "ensemble", "n_in": 6, "n_members": 3, "member": {
        "type": "mlp", "n_in": 6, "hidden": [16, 8, 4], "log1p_inputs": [1, 4], "n_steps": 2,
        "dropout": 0.2}},
    {"type": "mlp", "n_in": 6, "hidden": [12]},
    {"type": "logistic", "n_in": 6}])
def test_the_numpy_gradients_are_autograds(arch: dict[str, Any], method: Any) -> None:
    net = trained_like(build_net(arch), 6, seed=3)
    members = explain_mod._members(net)
    assert members is not None and all(explain_mod._linear_views(m) for m in members)
    x = np.abs(np.random.default_rng(4).normal(size=(33, 6))).astype(np.float32) * 3
    want = explain_mod._attribute_torch(net, members, x, method, 5)
    np.testing.assert_allclose(attribute(net, x, method, 5), want, rtol=1e-4, atol=1e-5)


def test_the_numpy_path_reads_the_live_weights_and_leaves_odd_nets_to_autograd() -> None:
    net = trained_like(build_net({"type": "mlp", "n_in": 4, "hidden": [8]}), 4)
    assert isinstance(net, MLP)
    x = np.abs(np.random.default_rng(5).normal(size=(10, 4))).astype(np.float32)
    before = attribute(net, x, "ig", 4)
    with torch.no_grad():
        net.body[0].weight.mul_(-2.0)  # e.g. corrupted in place: no stale copy is used
    after = attribute(net, x, "ig", 4)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, explain_mod._attribute_torch(net, [net], x, "ig", 4),
                               rtol=1e-4, atol=1e-5)
    assert explain_mod._linear_views(net.train()) is None  # dropout active: autograd
    net.eval()
    net.body[1] = torch.nn.Tanh()  # not a ReLU net
    assert explain_mod._linear_views(net) is None
    np.testing.assert_allclose(attribute(net, x, "gxi"),
                               explain_mod._attribute_torch(net, [net], x, "gxi", 1),
                               rtol=1e-6)


def test_a_non_mlp_module_is_refused() -> None:
    with pytest.raises(TypeError):
        attribute(torch.nn.Linear(3, 1), np.zeros((2, 3), np.float32))


def test_reasons_are_top_k_by_magnitude_signed_and_parseable() -> None:
    contrib = np.array([[0.1, -0.9, 0.0002, 0.5], [0.0, 0.0, 0.0, 0.0]])
    names = ("a", "b", "c", "d")
    reasons = top_reasons(contrib, names, "primary", 3)
    assert reasons[0] == ("primary_contrib:b=-0.900", "primary_contrib:d=+0.500",
                          "primary_contrib:a=+0.100")
    assert reasons[1] == ()  # nothing worth printing
    assert parse_contribution(reasons[0][0]) == ("primary", "b", -0.9)
    assert parse_contribution("rule:high_amount") is None
    assert parse_contribution("primary_contrib:x=oops") is None
    assert len(top_reasons(contrib, names, "p", 8)[0]) == 3  # zeros left out, k capped


@pytest.mark.parametrize("kw", [{"top_k": 0}, {"top_k": 9}, {"method": "shap"},
                                {"ig_steps": 0}])
def test_explain_config_is_validated(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ExplainConfig(**kw)


# -- the ladder's explain step -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[TorchModel, TorchModel]:
    root = tmp_path_factory.mktemp("models")
    p = TorchModel.load(write_model_dir(root / "p", PRIMARY_NAMES, "p-1"), device="cpu")
    f = TorchModel.load(write_model_dir(root / "f", EVENT_NAMES, "f-1", seed=1), device="cpu")
    return p, f


def run(ladder: Any, clock: FakeClock, n: int = 12) -> list[Score]:
    txs = [make_tx(i, amount=float(20 + 90 * i)) for i in range(n)]
    scores: list[Score] = ladder.score_batch(txs, Deadline.after(clock, 0.05))
    return scores


def contribs(s: Score) -> list[str]:
    return [r for r in s.reasons if parse_contribution(r) is not None]


def test_reviewed_records_carry_their_models_contributions_and_others_none(
        torch_models: tuple[TorchModel, TorchModel]) -> None:
    p, f = torch_models
    clock = FakeClock()
    mid = float(np.median([s.score for s in run(build(clock, primary=p, fallback=f), clock)]))
    half = PolicyHolder(parse_policy({"version": "half", "thresholds": {
        "models": {"p-1": {"review": mid, "block": 1.0}}}}))  # about half the batch reviewed
    plain = run(build(clock, primary=p, fallback=f, policy=half), clock)
    scores = run(build(clock, primary=p, fallback=f, policy=half,
                       explain=ExplainConfig(top_k=3)), clock)
    assert [dataclasses.replace(s, reasons=(), latency_s=0) for s in scores] == \
        [dataclasses.replace(s, reasons=(), latency_s=0) for s in plain]  # answers unchanged
    reviewed = [s for s in scores if s.flag_for_review]
    assert reviewed and len(reviewed) < len(scores)
    for s in scores:
        got = contribs(s)
        if s.flag_for_review:
            assert s.tier == Tier.PRIMARY and 1 <= len(got) <= 3
            parsed = [parse_contribution(r) for r in got]
            assert all(t == "primary" and n in PRIMARY_NAMES for t, n, _ in parsed)  # type: ignore[misc]
            mags = [abs(v) for _, _, v in parsed]  # type: ignore[misc]
            assert mags == sorted(mags, reverse=True)
        else:
            assert got == []


def test_all_records_and_the_fallback_are_explained(
        torch_models: tuple[TorchModel, TorchModel]) -> None:
    p, f = torch_models
    clock = FakeClock()
    scores = run(build(clock, primary=None, fallback=f, explain=ExplainConfig(all_records=True)),
                 clock)
    assert {s.tier for s in scores} == {Tier.FALLBACK}
    for s in scores:
        got = [parse_contribution(r) for r in contribs(s)]
        assert 1 <= len(got) <= 4 and all(g is not None and g[0] == "fallback" for g in got)


def test_a_spent_deadline_skips_explanations_but_keeps_every_score(
        torch_models: tuple[TorchModel, TorchModel]) -> None:
    p, f = torch_models
    clock = FakeClock()
    listener = RecordingListener()
    scores = run(build(clock, primary=p, fallback=f, policy=ALL_REVIEW, listener=listener,
                       explain=ExplainConfig(min_remaining_s=10.0)), clock)
    assert len(scores) == 12 and all(s.tier == Tier.PRIMARY for s in scores)
    assert all(s.reasons[-1] == "primary_explain_deadline" and not contribs(s) for s in scores)
    assert ("deadline_miss", "explain") in listener.events


def test_only_the_records_that_fit_the_deadline_are_explained_highest_first(
        torch_models: tuple[TorchModel, TorchModel]) -> None:
    p, f = torch_models
    clock = FakeClock()
    listener = RecordingListener()
    ladder = build(clock, primary=p, fallback=f, policy=ALL_REVIEW, listener=listener,
                   explain=ExplainConfig(batch_budget_s=None))
    ex = ladder.explanations
    ex.warm()
    assert ex.s_per_row == {}  # warming measures nothing
    assert all(contribs(s) for s in run(ladder, clock))  # the first batch measures its cost
    assert set(ex.s_per_row) == {"primary"}
    ex.s_per_row["primary"] = 0.006 / 1.5  # 6 ms a row (with the safety factor)
    scores = run(ladder, clock)  # a 50 ms budget: 8 rows fit
    done = [s for s in scores if contribs(s)]
    skipped = [s for s in scores if s.reasons[-1] == "primary_explain_deadline"]
    assert len(done) == 8 and len(skipped) == 4
    assert min(s.score for s in done) >= max(s.score for s in skipped)
    assert ("deadline_miss", "explain") in listener.events
    ex.s_per_row["primary"] = 1.0  # nothing fits: skipped, and the estimate halves
    assert all(s.reasons[-1] == "primary_explain_deadline" for s in run(ladder, clock))
    assert ex.s_per_row["primary"] == 0.5


def test_the_batch_budget_caps_explanation_time_below_the_deadline(
        torch_models: tuple[TorchModel, TorchModel]) -> None:
    p, f = torch_models
    clock = FakeClock()
    listener = RecordingListener()
    ladder = build(clock, primary=p, fallback=f, policy=ALL_REVIEW, listener=listener,
                   explain=ExplainConfig(batch_budget_s=0.013))
    ex = ladder.explanations
    run(ladder, clock)  # measures the cost
    ex.s_per_row["primary"] = 0.004 / 1.5  # 4 ms a row: 13 ms of budget fit 3, 50 ms would 12
    scores = run(ladder, clock)
    done = [s for s in scores if contribs(s)]
    capped = [s for s in scores if s.reasons[-1] == "primary_explain_budget"]
    assert len(done) == 3 and len(capped) == 9
    assert min(s.score for s in done) >= max(s.score for s in capped)  # highest scores first
    assert ("deadline_miss", "explain") not in listener.events  # a budget, not a miss
    with pytest.raises(ValueError):
        ExplainConfig(batch_budget_s=0.0)


def test_a_model_without_gradients_says_so(torch_models: tuple[TorchModel, TorchModel]) -> None:
    clock = FakeClock()
    scores = run(build(clock, policy=ALL_REVIEW, explain=ExplainConfig()), clock)  # FnModels
    assert all(s.reasons[-1] == f"{s.tier}_explain_unavailable" for s in scores)


def test_an_explanation_that_raises_is_counted_and_costs_no_answer(
        torch_models: tuple[TorchModel, TorchModel], monkeypatch: pytest.MonkeyPatch) -> None:
    p, f = torch_models

    def broken(*_a: object, **_k: object) -> np.ndarray:
        raise RuntimeError("boom")

    monkeypatch.setattr(explain_mod, "attribute", broken)
    errors: list[str] = []

    class Listener(LadderListener):
        def on_internal_error(self, stage: str, exc: BaseException) -> None:
            errors.append(stage)

    clock = FakeClock()
    scores = run(build(clock, primary=p, fallback=f, policy=ALL_REVIEW, listener=Listener(),
                       explain=ExplainConfig()), clock)
    assert len(scores) == 12 and {s.tier for s in scores} == {Tier.PRIMARY}
    assert all(s.reasons[-1] == "primary_explain_error" for s in scores)
    assert errors == ["primary_explain"]


def test_shipped_models_explain_a_review_batch(tmp_path: Path) -> None:
    """The committed ensemble and fallback, batched: finite, bounded, named features."""
    from scorers.models.defaults import FALLBACK_DIR, PRIMARY_DIR

    for d in (PRIMARY_DIR, FALLBACK_DIR):
        model = TorchModel.load(d, device="cpu")
        x = np.abs(np.random.default_rng(3).normal(size=(16, len(model.feature_names))))
        c = attribute(model._net, x.astype(np.float32), "gxi")
        reasons = top_reasons(c, model.feature_names, "primary", 5)
        assert c.shape == x.shape and np.isfinite(c).all()
        assert all(len(r) <= 5 for r in reasons)
