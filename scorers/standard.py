"""The usual ladder: cache (when enabled, live mode only) → primary → fallback → rules.

`standard_tiers` builds the built-in tiers from models (or model directories, loaded
through `scorers.models.loading.load_model`: a corrupted or mismatched one leaves its
tier unavailable with the reason), `standard_spec` the `LadderSpec`, and
`standard_ladder` does both and `build_ladder`. `replay_budgets` is what replay mode
changes: per-call timeouts widened and slow-call durations scaled to the replay's
deadline. Feature names default to `scorers.features`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from scorers.batch_view import EventFeatures
from scorers.breakers import breaker_configs
from scorers.clock import Clock, SystemClock
from scorers.config import BreakerConfig, LadderConfig, replay_io_timeout_s
from scorers.executor import BoundedExecutor, Executor
from scorers.explain import ExplainConfig
from scorers.ladder import Ladder, LadderDeps, LadderSpec, Mode, build_ladder
from scorers.listeners import LadderListener
from scorers.models.loading import load_model
from scorers.models.slot import ModelSwitch
from scorers.policy import PolicyHolder
from scorers.ports import FeatureStore, Model, PredictionCache
from scorers.tier import Tier
from scorers.tiers.cache import CacheTier
from scorers.tiers.fallback import FallbackTier
from scorers.tiers.primary import PrimaryTier
from scorers.tiers.rules import RulesTier

ModelSource = Model | Path | str | None


def _feature_names() -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    try:
        features = importlib.import_module("scorers.features")
        return (tuple(features.EVENT_FEATURE_NAMES), tuple(features.ONLINE_FEATURE_NAMES))
    except (ImportError, AttributeError):
        return None


def replay_budgets(config: LadderConfig, breakers: Mapping[str, BreakerConfig],
                   deadline_s: float) -> tuple[LadderConfig, dict[str, BreakerConfig]]:
    """Budgets for a replay: a call is slow against the replay's deadline, not the live
    worker's 10-50 ms (a 5,000-record batch always takes longer)."""
    io_s = replay_io_timeout_s(deadline_s)
    config = dataclasses.replace(
        config, feature_timeout_s=max(config.feature_timeout_s, io_s),
        fallback_reserve_s=max(config.fallback_reserve_s, min(deadline_s / 10, 0.5)))
    slow_s = {"feature_store": io_s, "cache": io_s}
    out = {name: dataclasses.replace(
        b, slow_call_duration_s=max(b.slow_call_duration_s, slow_s.get(name, deadline_s)))
        for name, b in breakers.items()}
    return config, out


def standard_ladder(config: LadderConfig, *, primary: ModelSource, fallback: ModelSource,
                    event_features: EventFeatures, cache: PredictionCache | None = None,
                    feature_store: FeatureStore | None = None, clock: Clock | None = None,
                    listener: LadderListener | None = None, executor: Executor | None = None,
                    event_feature_names: Sequence[str] | None = None,
                    online_feature_names: Sequence[str] | None = None,
                    primary_unavailable_reason: str | None = None,
                    fallback_unavailable_reason: str | None = None,
                    breakers: Mapping[str, BreakerConfig] | None = None,
                    mode: Mode = "live", replay_deadline_s: float | None = None,
                    extra_tiers: Sequence[tuple[str, Tier]] = (),
                    primary_switch: ModelSwitch | None = None,
                    policy: PolicyHolder | None = None,
                    explain: ExplainConfig | None = None) -> Ladder:
    """Load the models, build the built-in tiers and the spec, build the ladder.
    `cache` is used only when `config.cache.enabled` and in live mode; in replay mode
    the budgets come from `replay_budgets(replay_deadline_s)`. `extra_tiers` inserts
    each (before, tier) pair in front of the tier named `before`. `primary_switch`: the
    primary tier's models as data (a registry's champion and canary, swapped between
    batches); its champion is then the primary and `primary` is ignored. `policy`: the
    holder of the run-time policy (None: built in); `explain`: contributions in the
    reviewed records' reasons (None: off)."""
    if primary_switch is not None:
        primary = primary_switch.slot.champion
    names = (None if event_feature_names is None or online_feature_names is None
             else (tuple(event_feature_names), tuple(online_feature_names)))
    names = names or _feature_names()
    event_names, online_names = names if names is not None else (None, None)
    primary_features = None if names is None else (*names[0], *names[1])
    p = load_model(primary, device=config.device, expected_features=primary_features,
                   role="primary")
    f = load_model(fallback, device="cpu", expected_features=event_names, role="fallback")
    p_reason = primary_unavailable_reason or p.reason
    online_count = len(online_names) if online_names is not None else (
        len(p.model.feature_names) - len(f.model.feature_names)
        if p.model is not None and f.model is not None else 0)
    if not p_reason and feature_store is None and online_count:
        p_reason = "no_feature_store"
    configs = breaker_configs(breakers)
    if mode == "replay":
        config, configs = replay_budgets(config, configs, replay_deadline_s or 600.0)
    executor = executor or BoundedExecutor(config.primary_bulkhead_threads,
                                           config.primary_bulkhead_max_outstanding)
    primary_tier = PrimaryTier(p.model, executor, reserve_s=config.fallback_reserve_s,
                               max_poison_rows=config.max_poison_rows,
                               min_confidence=config.primary_min_confidence,
                               unavailable_reason=p_reason, switch=primary_switch)
    tiers: list[Tier] = []
    if cache is not None and config.cache.enabled and mode == "live":
        tiers.append(CacheTier(cache, primary_tier, config.cache))
    tiers += [primary_tier,
              FallbackTier(f.model, min_confidence=config.fallback_min_confidence,
                           unavailable_reason=fallback_unavailable_reason or f.reason),
              RulesTier()]
    for before, tier in extra_tiers:
        tiers.insert([t.name for t in tiers].index(before), tier)
    configs = breaker_configs(configs, names=tuple(n for t in tiers for n in t.needs))
    spec = LadderSpec(tuple(tiers), configs, config, mode, explain=explain)
    deps = LadderDeps(event_features, feature_store, online_count, clock or SystemClock(),
                      listener or LadderListener(), (executor,), policy=policy)
    return build_ladder(spec, deps)
