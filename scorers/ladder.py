"""The ladder: cache → primary → fallback → rules → safe default, per record.

`build_ladder` wires one from models (or model directories), the cache, the
feature store and the event feature function; `Ladder` (in `ladder_core`) runs
it. A model directory that fails its integrity check, or a model whose feature
names do not match the feature definitions, leaves that tier unavailable: its
breaker is forced open with the reason, and the tiers below answer.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

from scorers.clock import Clock, SystemClock
from scorers.config import LadderConfig
from scorers.executor import BoundedExecutor, Executor
from scorers.ladder_core import EventFeatures, Ladder
from scorers.listeners import LadderListener
from scorers.models.manifest import ModelIntegrityError
from scorers.ports import FeatureStore, Model, PredictionCache

__all__ = ["EventFeatures", "Ladder", "build_ladder"]


def _feature_names() -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    try:
        features = importlib.import_module("scorers.features")
        return (tuple(features.EVENT_FEATURE_NAMES), tuple(features.ONLINE_FEATURE_NAMES))
    except (ImportError, AttributeError):
        return None


def _load(model: Model | Path | str | None, device: str) -> tuple[Model | None, str]:
    if model is None or not isinstance(model, Path | str):
        return model, ""
    from scorers.models.torch_model import TorchModel  # torch only when a directory is given

    try:
        return TorchModel.load(model, device=device), ""
    except ModelIntegrityError as exc:
        return None, f"integrity: {exc}"


def build_ladder(config: LadderConfig, *, primary: Model | Path | str | None,
                 fallback: Model | Path | str | None, event_features: EventFeatures,
                 cache: PredictionCache | None = None, feature_store: FeatureStore | None = None,
                 clock: Clock | None = None, listener: LadderListener | None = None,
                 executor: Executor | None = None,
                 event_feature_names: Sequence[str] | None = None,
                 online_feature_names: Sequence[str] | None = None,
                 primary_unavailable_reason: str | None = None) -> Ladder:
    """Wire a ladder. A model may be given as a directory: it is loaded here, and a
    corrupted or mismatched one leaves that tier unavailable (breaker forced open,
    reason in `primary_unavailable_reason`; a caller that loaded it itself and failed
    passes that reason). Feature names default to `scorers.features`."""
    primary_model, primary_reason = _load(primary, config.device)
    if primary_unavailable_reason:  # the caller tried to load it and failed
        primary_reason = primary_unavailable_reason
    fallback_model, fallback_reason = _load(fallback, "cpu")
    names = (None if event_feature_names is None or online_feature_names is None
             else (tuple(event_feature_names), tuple(online_feature_names)))
    names = names or _feature_names()
    online_count: int | None = None
    if names is not None:
        event_names, online_names = names
        online_count = len(online_names)
        if primary_model is not None and primary_model.feature_names != event_names + online_names:
            primary_reason = primary_reason or "feature_mismatch: primary expects other features"
        if fallback_model is not None and fallback_model.feature_names != event_names:
            fallback_reason = fallback_reason or "feature_mismatch: fallback expects other features"
    if primary_model is not None and not primary_reason and feature_store is None and online_count:
        primary_reason = "no_feature_store"
    clock = clock or SystemClock()
    return Ladder(config, primary=primary_model, fallback=fallback_model, cache=cache,
                  feature_store=feature_store, event_features=event_features, clock=clock,
                  listener=listener or LadderListener(),
                  executor=executor or BoundedExecutor(config.primary_threads,
                                                       config.primary_max_outstanding),
                  primary_unavailable_reason=primary_reason,
                  fallback_unavailable_reason=fallback_reason, online_feature_count=online_count)
