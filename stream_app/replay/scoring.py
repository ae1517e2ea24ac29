"""The ladder a replay scores with: a chosen model version, relaxed deadline, no side effects.

`build_replay_scorer` checks the primary directory's manifest version against
`--model-version` before loading anything, then builds the ladder through
`stream_app.wiring.build_scorer` (the same wiring as the live worker) and
isolates it from live state:

- the prediction cache is dropped: a backfill recomputes every score (reading
  it would answer from another run, writing it would refresh live entries);
- the feature store is read-only: replayed events are old events, folding them
  into the live online aggregates again would double-count them;
- the per-record timeouts inside the ladder scale with the replay's deadline,
  so large batches are not starved by the live worker's 10 ms budgets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from scorers.breaker import CircuitBreaker, State
from scorers.clock import Clock, SystemClock
from scorers.config import BreakerConfig
from scorers.models.defaults import PRIMARY_DIR
from scorers.models.manifest import ModelIntegrityError, load_manifest
from scorers.ports import BoolVector, FeatureStore, FloatMatrix
from stream_app.config import Settings
from topics.schemas import Transaction

if TYPE_CHECKING:  # the ladder (and torch) load only when a replay really scores
    from scorers.ladder import Ladder

# "No deadline" still bounds one batch, so a hung model cannot stall a replay forever.
DISABLED_DEADLINE_S = 600.0


class ModelVersionError(RuntimeError):
    """The primary model directory does not hold the version the replay asked for."""


class ReadOnlyFeatureStore:
    """Reads the live online features; never writes them."""

    def __init__(self, inner: FeatureStore) -> None:
        self.inner = inner

    def fetch(self, txs: Sequence[Transaction], timeout_s: float) -> tuple[FloatMatrix, BoolVector]:
        return self.inner.fetch(txs, timeout_s)

    def update(self, txs: Sequence[Transaction], timeout_s: float) -> None:
        return None


def effective_deadline_s(deadline_s: float | None) -> float:
    """The per-batch budget: None or <= 0 disables it (bounded by DISABLED_DEADLINE_S)."""
    if deadline_s is None or deadline_s <= 0:
        return DISABLED_DEADLINE_S
    return deadline_s


def check_model_version(primary_dir: Path, expected: str | None) -> str:
    """The manifest version of `primary_dir`; ModelVersionError when it is not `expected`."""
    try:
        version = load_manifest(primary_dir).version
    except ModelIntegrityError as exc:
        raise ModelVersionError(f"cannot read the primary model in {primary_dir}: {exc}") from exc
    if expected is not None and version != expected:
        raise ModelVersionError(
            f"--model-version {expected!r} asked, but {primary_dir} holds primary model "
            f"version {version!r}; point --primary-dir at the directory of {expected!r}")
    return version


def replay_settings(settings: Settings, primary_dir: Path | None, deadline_s: float) -> Settings:
    """The live settings with the replay's primary directory and relaxed budgets."""
    models = settings.models.model_copy(
        update={"primary_dir": primary_dir or settings.models.primary_dir})
    batch = settings.batch.model_copy(update={"deadline_s": deadline_s})
    redis = settings.redis.model_copy(
        update={"socket_timeout_s": max(settings.redis.socket_timeout_s, _io_timeout_s(deadline_s))})
    return settings.model_copy(update={"models": models, "batch": batch, "redis": redis})


def _io_timeout_s(deadline_s: float) -> float:
    """Per-call budget for Redis: half the batch's (a 5,000-row feature read takes ~1 s on a
    busy 2-core box), at most 30 s."""
    return min(max(deadline_s / 2, 0.01), 30.0)


def isolate(ladder: Ladder, deadline_s: float, clock: Clock | None = None) -> Ladder:
    """Drop the cache, make the feature store read-only, widen per-call timeouts, and
    rebuild the breakers so that a call is slow only against the replay's budgets (a
    5,000-record batch always takes longer than the live worker's 10-50 ms)."""
    ladder.cache = None
    ladder.revalidation_queue.clear()
    if ladder.feature_store is not None and not isinstance(ladder.feature_store,
                                                           ReadOnlyFeatureStore):
        ladder.feature_store = ReadOnlyFeatureStore(ladder.feature_store)
    io_s = _io_timeout_s(deadline_s)
    c = ladder.config

    def slower(b: BreakerConfig, slow_s: float) -> BreakerConfig:
        return dataclasses.replace(b, slow_call_duration_s=max(b.slow_call_duration_s, slow_s))

    ladder.config = dataclasses.replace(
        c, deadline_s=deadline_s, feature_timeout_s=max(c.feature_timeout_s, io_s),
        fallback_reserve_s=max(c.fallback_reserve_s, min(deadline_s / 10, 0.5)),
        primary_breaker=slower(c.primary_breaker, deadline_s),
        fallback_breaker=slower(c.fallback_breaker, deadline_s),
        feature_breaker=slower(c.feature_breaker, io_s))
    configs = {"primary": ladder.config.primary_breaker,
               "fallback": ladder.config.fallback_breaker,
               "feature_store": ladder.config.feature_breaker}
    for name, config in configs.items():
        if ladder.breakers[name].state is State.CLOSED:  # forced-open tiers stay unavailable
            ladder.breakers[name] = CircuitBreaker(name, config, clock or SystemClock())
    return ladder


def build_replay_scorer(settings: Settings, *, model_version: str | None,
                        primary_dir: Path | None, deadline_s: float | None,
                        clock: Clock | None = None) -> tuple[Ladder, str]:
    """The isolated ladder and the primary model version it scores with."""
    from stream_app.wiring import build_scorer

    budget_s = effective_deadline_s(deadline_s)
    directory = Path(primary_dir or settings.models.primary_dir or PRIMARY_DIR)
    version = check_model_version(directory, model_version)
    ladder = build_scorer(replay_settings(settings, directory, budget_s), clock=clock)
    reason = getattr(ladder, "primary_unavailable_reason", "")
    if reason and model_version is not None:
        ladder.close()
        raise ModelVersionError(f"primary model {version!r} in {directory} is unavailable: {reason}")
    return isolate(ladder, budget_s, clock), version

