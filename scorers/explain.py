"""Reasons a reviewer can read: the features that pushed a model's answer, signed.

For the records routed to manual review (all answered records with
`ExplainConfig.all_records`), after the batch's answers and review rules are fixed,
`Explanations.run` asks the answering model tier why: one batched gradient call per tier
over those rows, and appends the top-k contributions to each record's reasons as

    <tier>_contrib:<feature>=<signed contribution>    e.g. primary_contrib:amount=+1.372

in logit units (the sum over all features approximates the answer's logit minus the
logit of the reference input), largest |contribution| first, at most `top_k` (<= 8) per
record, printed with 3 decimals; contributions that round to 0 are left out.

Method (`attribute`): the nets normalise each input (`MLP`: log1p for heavy-tailed
inputs, then (v - mean) / std, plus 0/1 step indicators of the raw value). Attributions
are taken in that normalised space u against the reference u0 = the training mean (z = 0,
and the step indicators the mean's raw value has), and the parts of u that come from
one input are summed back to that input. "ig" (default, `ig_steps`=4) is integrated
gradients with `ig_steps` midpoints on the straight path u0 -> u, batched as one
forward and one backward over `ig_steps` x rows: its contributions add up to
logit(u) - logit(u0) (completeness). "gxi" is gradient x (u - u0), one forward and
backward over the rows: a few times cheaper, but for the shipped ensemble (ReLU, step
indicators) its sum is off by about the whole logit difference and its top 4 are
IG's top 4 only ~79% of the time (IG-4: 99%). benchmarks/explain.py measures both
(docs/policy.md). An ensemble's contribution is the mean of its members' (its logit is
their mean). On the CPU the same numbers are computed by hand in numpy
(`_attribute_numpy`: about half the work, see there); autograd serves a GPU module.

A record gets instead `<tier>_explain_<why>` when it is not explained: `deadline` (its
estimated cost did not fit what was left of the batch's deadline: `Explanations`),
`unavailable` (no differentiable torch module, or the model that answered is not the
tier's current one), `error` (the computation raised: logged, counted). Its score is
never changed or held back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

import numpy as np
import numpy.typing as npt
import torch

from scorers.models.integrity import module_of
from scorers.models.nets import MLP, Ensemble
from scorers.ports import FloatMatrix

if TYPE_CHECKING:
    from scorers.batch_view import BatchView
    from scorers.clock import Clock
    from scorers.listeners import LadderListener
    from scorers.outcome import Outcomes
    from scorers.tier import Tier

Method = Literal["gxi", "ig"]
IntArray = npt.NDArray[np.intp]
MAX_TOP_K: Final = 8
CONTRIB_TAG: Final = "_contrib:"


@dataclass(frozen=True, slots=True)
class ExplainConfig:
    top_k: int = 4  # contributions per record
    all_records: bool = False  # explain every model answer, not only the reviewed ones
    method: Method = "ig"
    ig_steps: int = 4
    min_remaining_s: float = 0.0  # skip when no more than this is left of the deadline
    # At most this much of one batch's time goes to explanations (None: up to the
    # deadline). At ~0.15-0.25 ms per reviewed record (IG-4, this CPU) 10 ms explains the
    # 5-10 reviewed records of a 512-record batch at a 1-2% review rate, and bounds what a
    # batch with many reviewed records pays: before this cap a synthetic set with a high
    # review share lost half its throughput to explanations (`make bench`).
    batch_budget_s: float | None = 0.01

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be in 1..{MAX_TOP_K}, got {self.top_k}")
        if self.method not in ("gxi", "ig"):
            raise ValueError(f"method must be gxi or ig, got {self.method!r}")
        if not 1 <= self.ig_steps <= 64:
            raise ValueError(f"ig_steps must be in 1..64, got {self.ig_steps}")
        if self.batch_budget_s is not None and self.batch_budget_s <= 0:
            raise ValueError(f"batch_budget_s must be > 0 or None, got {self.batch_budget_s}")


# -- attribution -----------------------------------------------------------------------------------
def _members(module: torch.nn.Module) -> list[MLP] | None:
    if isinstance(module, MLP):
        return [module]
    if isinstance(module, Ensemble) and all(isinstance(m, MLP) for m in module.members):
        return [m for m in module.members if isinstance(m, MLP)]
    return None


def explainable(module: torch.nn.Module | None) -> bool:
    return module is not None and _members(module) is not None


def _normalised(m: MLP, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The body's input u for `x`, the reference u0 and, per column of u, its input."""
    n_in = x.shape[1]
    z = (m.transform_inputs(x) - m.mean) / m.std
    owner = torch.arange(n_in, device=x.device)
    if not m.n_steps:
        return z, torch.zeros_like(z[0]), owner
    steps = (x.unsqueeze(-1) >= m.edges).flatten(1).to(z.dtype)
    x_ref = torch.where(m.log_mask, torch.expm1(m.mean), m.mean)  # the raw value at the mean
    steps_ref = (x_ref.unsqueeze(-1) >= m.edges).flatten().to(z.dtype)
    u0 = torch.cat([torch.zeros_like(z[0]), steps_ref])
    owner = torch.cat([owner, owner.repeat_interleave(m.n_steps)])
    return torch.cat([z, steps], dim=1), u0, owner


def attribute(module: torch.nn.Module, x: FloatMatrix, method: Method = "gxi",
              ig_steps: int = 8) -> npt.NDArray[np.float64]:
    """(n, n_inputs) signed contributions to each row's logit (see the module docstring).
    A module on the CPU in eval mode is differentiated by hand in numpy
    (`_attribute_numpy`); otherwise by torch's autograd (`_attribute_torch`)."""
    members = _members(module)
    if members is None:
        raise TypeError(f"cannot attribute a {type(module).__name__}")
    layers = [_linear_views(m) for m in members]
    if all(w is not None for w in layers):
        return _attribute_numpy(members, [w for w in layers if w is not None], x,
                                _alphas(method, ig_steps))
    return _attribute_torch(module, members, x, method, ig_steps)


def _alphas(method: Method, ig_steps: int) -> npt.NDArray[np.float32]:
    if method == "ig":
        return ((np.arange(ig_steps, dtype=np.float32) + 0.5) / ig_steps).astype(np.float32)
    return np.ones(1, dtype=np.float32)


Layers = list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]


def _linear_views(m: MLP) -> Layers | None:
    """The body's (weight, bias) pairs as numpy views of the live tensors (no copy, so a
    swapped or altered weight is always seen), when the body is Linear, then (ReLU,
    Dropout*, Linear)*, on the CPU in float32 and in eval mode; else None."""
    if m.training:
        return None
    out: Layers = []
    expect_linear = True
    for layer in m.body:
        if isinstance(layer, torch.nn.Dropout) and out and expect_linear:
            continue  # identity in eval mode, after a ReLU
        if expect_linear:
            if not isinstance(layer, torch.nn.Linear) or layer.bias is None \
                    or layer.weight.device.type != "cpu" or layer.weight.dtype != torch.float32:
                return None
            out.append((layer.weight.detach().numpy(), layer.bias.detach().numpy()))
            expect_linear = False
        elif isinstance(layer, torch.nn.ReLU):
            expect_linear = True
        else:
            return None
    return out if out and not expect_linear else None


def _attribute_numpy(members: Sequence[MLP], layers: Sequence[Layers], x: FloatMatrix,
                     alphas: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """`_attribute_torch`'s numbers, by hand: on the path u0 + a * (u - u0) the first
    layer's pre-activation is W1 u0 + b1 + a * W1 (u - u0), so it is computed once per row
    (not once per midpoint), and since the gradient is linear in the first layer's, the
    midpoints' gradients are averaged before going back through W1. ReLU's gradient is
    taken as 0 at 0, as torch does. Roughly half the multiply-adds of autograd, and none
    of its per-call overhead on the few rows of a batch."""
    xa = np.ascontiguousarray(x, dtype=np.float32)
    n, n_in = xa.shape
    total = np.zeros((n, n_in), dtype=np.float32)
    steps = alphas.reshape(-1, 1, 1)
    for m, ws in zip(members, layers, strict=True):
        u, u0 = _normalised_numpy(m, xa)
        delta = u - u0
        (w1, b1), rest = ws[0], ws[1:]
        if not rest:  # no hidden layer: the gradient is W1 itself
            grad = np.broadcast_to(w1[0], delta.shape)
        else:
            pre = (w1 @ u0 + b1) + steps * (delta @ w1.T)  # (midpoints, n, h1)
            masks = [pre > 0]
            for w, b in rest[:-1]:
                pre = (pre * masks[-1]) @ w.T + b
                masks.append(pre > 0)
            g = np.broadcast_to(rest[-1][0][0], pre.shape) * masks[-1]
            for (w, _b), mask in zip(reversed(rest[:-1]), reversed(masks[:-1]), strict=True):
                g = (g @ w) * mask
            grad = g.mean(axis=0) @ w1
        c = grad * delta
        total += c[:, :n_in]
        if m.n_steps:
            total += c[:, n_in:].reshape(n, n_in, m.n_steps).sum(axis=2)
    return (total / len(members)).astype(np.float64)


def _normalised_numpy(m: MLP, x: npt.NDArray[np.float32],
                      ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """`_normalised` in numpy: u and u0 (columns: the inputs, then each input's steps)."""
    mean, std = m.mean.detach().numpy(), m.std.detach().numpy()
    log_mask = m.log_mask.numpy()
    z = (np.where(log_mask, np.log1p(np.maximum(x, 0.0)), x) - mean) / std
    z0 = np.zeros(x.shape[1], dtype=np.float32)
    if not m.n_steps:
        return z.astype(np.float32), z0
    edges = m.edges.detach().numpy()
    steps = (x[:, :, None] >= edges).reshape(x.shape[0], -1).astype(np.float32)
    x_ref = np.where(log_mask, np.expm1(mean), mean)
    steps_ref = (x_ref[:, None] >= edges).reshape(-1).astype(np.float32)
    return (np.concatenate([z, steps], axis=1).astype(np.float32),
            np.concatenate([z0, steps_ref]))


def _attribute_torch(module: torch.nn.Module, members: Sequence[MLP], x: FloatMatrix,
                     method: Method, ig_steps: int) -> npt.NDArray[np.float64]:
    """Autograd over the whole path (a module on a GPU, or not in eval mode)."""
    device = next(iter(module.buffers())).device
    xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=device)
    n, n_in = xt.shape
    alphas = (torch.arange(ig_steps, device=device, dtype=torch.float32) + 0.5) / ig_steps \
        if method == "ig" else torch.ones(1, device=device)
    total = torch.zeros((n, n_in), device=device)
    with torch.enable_grad():
        prepared, paths = [], []
        for m in members:
            with torch.no_grad():
                u, u0, owner = _normalised(m, xt)
            delta = u - u0
            path = (u0 + alphas.view(-1, 1, 1) * delta).reshape(-1, u.shape[1])
            path.requires_grad_(True)
            prepared.append((delta, owner))
            paths.append(path)
        logits = torch.stack([m.body(p).sum() for m, p in zip(members, paths, strict=True)])
        grads = torch.autograd.grad(logits.sum(), paths)
    with torch.no_grad():
        for (delta, owner), g in zip(prepared, grads, strict=True):
            mean_grad = g.reshape(len(alphas), n, -1).mean(dim=0)
            total.index_add_(1, owner, mean_grad * delta)
        total /= len(members)
    return total.cpu().numpy().astype(np.float64)


def top_reasons(contrib: npt.NDArray[np.float64], names: Sequence[str], tier: str,
                top_k: int) -> list[tuple[str, ...]]:
    """Per row, the `top_k` largest |contributions| as `<tier>_contrib:<name>=<+x.xxx>`."""
    k = min(top_k, contrib.shape[1])
    order = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :k]
    prefix = f"{tier}{CONTRIB_TAG}"
    out: list[tuple[str, ...]] = []
    for row, cols in zip(contrib.tolist(), order.tolist(), strict=True):
        out.append(tuple(f"{prefix}{names[c]}={row[c]:+.3f}" for c in cols
                         if abs(row[c]) >= 0.0005))
    return out


def parse_contribution(reason: str) -> tuple[str, str, float] | None:
    """(tier, feature, contribution) of a contribution reason; None for other reasons."""
    head, sep, rest = reason.partition(CONTRIB_TAG)
    name, eq, value = rest.partition("=")
    if not sep or not eq:
        return None
    try:
        return head, name, float(value)
    except ValueError:
        return None


# -- per tier --------------------------------------------------------------------------------------
Inputs = Callable[["BatchView", IntArray], FloatMatrix | None]
COST_SAFETY: Final = 1.5  # skip when the estimate times this does not fit what is left
COST_EWMA: Final = 0.3  # weight of the latest batch in the seconds-per-row estimate


@dataclass(frozen=True, slots=True)
class TierExplainer:
    """How to explain one tier's answers: its model (read at each batch: it may be
    swapped) and the model's inputs for given records."""

    tier: str
    model: Callable[[], object]
    inputs: Inputs


def _model_input(view: BatchView, idx: IntArray) -> FloatMatrix | None:
    x, _have = view.model_input(idx)
    return x


def _event_rows(view: BatchView, idx: IntArray) -> FloatMatrix | None:
    return view.event_rows(idx)


def _current_model(tier: object) -> Callable[[], object]:
    return lambda: getattr(tier, "model", None)


def explainers_for(tiers: Sequence[Tier]) -> dict[str, TierExplainer]:
    """Explainers for the built-in model tiers among `tiers` (the cache serves the
    primary's answers: it is explained with the primary's model and inputs)."""
    from scorers.tiers.cache import CacheTier
    from scorers.tiers.fallback import FallbackTier
    from scorers.tiers.primary import PrimaryTier

    out: dict[str, TierExplainer] = {}
    for tier in tiers:
        if isinstance(tier, CacheTier):
            out[tier.name] = TierExplainer(tier.name, _current_model(tier.primary), _model_input)
        elif isinstance(tier, PrimaryTier):
            out[tier.name] = TierExplainer(tier.name, _current_model(tier), _model_input)
        elif isinstance(tier, FallbackTier):
            out[tier.name] = TierExplainer(tier.name, _current_model(tier), _event_rows)
    return out


class Explanations:
    """A ladder's explain step. It runs inline on the scoring thread, after the tiers:
    never in the primary's bulkhead, where a slow explanation would hold a slot the next
    batch's primary call needs. Per tier, it explains as many of the records as fit in
    what is left of the deadline (less `min_remaining_s`) and of the batch's explanation
    budget (`batch_budget_s`, shared by the tiers) at `COST_SAFETY` times the estimated
    cost (an EWMA of seconds per row, measured on earlier batches), highest scores first;
    the others get `<tier>_explain_deadline`, or `<tier>_explain_budget` when the budget,
    not the deadline, was the limit. When not one row fits, the
    estimate is halved, so one slow outlier cannot switch explanations off for good.
    `warm` runs each model's attribution once before the first batch (autograd's first
    backward is slow, and it must not set the estimate)."""

    def __init__(self, tiers: Sequence[Tier], config: ExplainConfig) -> None:
        self.config = config
        self.explainers = explainers_for(tiers)
        self.s_per_row: dict[str, float] = {}
        self._budget_until = float("inf")

    def run(self, view: BatchView, out: Outcomes, listener: LadderListener,
            clock: Clock) -> int:
        """Append contributions to the reasons of the records to explain; the number
        explained. Never raises for a model's sake and never changes an answer."""
        want = out.answered & (out.flag | self.config.all_records)
        if not want.any() or not self.explainers:
            return 0
        tiers = np.array(out.tier, dtype=object)
        budget = self.config.batch_budget_s
        self._budget_until = float("inf") if budget is None else clock.monotonic() + budget
        done = 0
        for name, ex in self.explainers.items():
            rows = np.flatnonzero(want & (tiers == name))
            if rows.size:
                done += self._tier(view, out, ex, rows, listener, clock)
        return done

    def warm(self, rows: int = 8) -> None:
        """One attribution per explainable model, on zeros; errors are the batch's business."""
        for ex in self.explainers.values():
            model = ex.model()
            module = module_of(model)
            names: Sequence[str] = getattr(model, "feature_names", ())
            if module is not None and explainable(module) and names:
                attribute(module, np.zeros((rows, len(names)), np.float32), self.config.method,
                          self.config.ig_steps)

    def _fitting(self, tier: str, rows: int, room_s: float) -> int:
        """How many rows fit in `room_s` (halving the estimate when none)."""
        if room_s <= 0:
            return 0
        estimate_s = self.s_per_row.get(tier, 0.0) * COST_SAFETY
        if estimate_s <= 0:
            return rows
        fit = min(rows, int(room_s / estimate_s))
        if fit == 0:
            self.s_per_row[tier] /= 2
        return fit

    def _tier(self, view: BatchView, out: Outcomes, ex: TierExplainer, rows: IntArray,
              listener: LadderListener, clock: Clock) -> int:
        name = ex.tier
        model = ex.model()
        module = module_of(model)
        names: Sequence[str] = getattr(model, "feature_names", ())
        if module is None or not explainable(module) or not names:
            out.note(rows, f"{name}_explain_unavailable")
            return 0
        version = getattr(model, "version", None)
        same = np.array([out.version[i] == version for i in rows.tolist()], dtype=np.bool_)
        if not same.all():  # answered by another model (a canary, a swap since)
            out.note(rows[~same], f"{name}_explain_unavailable")
            rows = rows[same]
            if not rows.size:
                return 0
        deadline_s = view.deadline.remaining() - self.config.min_remaining_s
        budget_s = self._budget_until - clock.monotonic()
        fit = self._fitting(name, rows.size, min(deadline_s, budget_s))
        if fit < rows.size:
            rows = rows[np.argsort(-out.score[rows], kind="stable")]  # highest scores first
            by_budget = budget_s < deadline_s
            out.note(rows[fit:], f"{name}_explain_{'budget' if by_budget else 'deadline'}")
            if not by_budget:
                listener.on_deadline_miss("explain")
            rows = np.sort(rows[:fit])
            if not rows.size:
                return 0
        t0 = clock.monotonic()
        try:
            x = ex.inputs(view, rows)
            if x is None or x.shape != (rows.size, len(names)):
                raise ValueError(f"inputs of shape {None if x is None else x.shape} for "
                                 f"{rows.size} rows of {len(names)} features")
            contrib = attribute(module, x, self.config.method, self.config.ig_steps)
        except Exception as exc:  # noqa: BLE001 - an explanation never costs an answer
            listener.on_internal_error(f"{name}_explain", exc)
            out.note(rows, f"{name}_explain_error")
            return 0
        finally:
            elapsed_s = clock.monotonic() - t0
            listener.on_stage_duration("explain", elapsed_s)
        per_row = elapsed_s / rows.size
        old = self.s_per_row.get(name)
        self.s_per_row[name] = per_row if old is None else old + COST_EWMA * (per_row - old)
        out.note_each(rows, top_reasons(contrib, names, name, self.config.top_k))
        return int(rows.size)
