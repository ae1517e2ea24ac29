"""The ladder a replay scores with: a chosen model version, relaxed deadline, no side effects.

`build_replay_scorer` checks the primary directory's manifest version against
`--model-version` before loading anything, then builds the ladder through
`stream_app.wiring.build_scorer` (the same wiring as the live worker) in replay
mode (`LadderSpec.mode = "replay"`, see `scorers.ladder` / `scorers.standard`):

- no prediction cache: a backfill recomputes every score (reading it would answer
  from another run, writing it would refresh live entries);
- the feature store is only read: replayed events are old events, folding them
  into the live online aggregates again would double-count them;
- the per-call timeouts and breaker slow-call durations scale with the replay's
  deadline, so large batches are not starved by the live worker's 10 ms budgets.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from scorers.clock import Clock
from scorers.config import replay_io_timeout_s
from scorers.models.defaults import PRIMARY_DIR
from scorers.models.manifest import ModelIntegrityError, load_manifest
from stream_app.config import Settings

if TYPE_CHECKING:  # the ladder (and torch) load only when a replay really scores
    from scorers.ladder import Ladder

# "No deadline" still bounds one batch, so a hung model cannot stall a replay forever.
DISABLED_DEADLINE_S = 600.0


class ModelVersionError(RuntimeError):
    """The primary model directory does not hold the version the replay asked for."""


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
        update={"socket_timeout_s": max(settings.redis.socket_timeout_s, replay_io_timeout_s(deadline_s))})
    return settings.model_copy(update={"models": models, "batch": batch, "redis": redis})


def build_replay_scorer(settings: Settings, *, model_version: str | None,
                        primary_dir: Path | None, deadline_s: float | None,
                        clock: Clock | None = None) -> tuple[Ladder, str]:
    """The isolated ladder and the primary model version it scores with."""
    from stream_app.wiring import build_scorer

    budget_s = effective_deadline_s(deadline_s)
    directory = Path(primary_dir or settings.models.primary_dir or PRIMARY_DIR)
    version = check_model_version(directory, model_version)
    ladder = build_scorer(replay_settings(settings, directory, budget_s), clock=clock,
                          mode="replay", replay_deadline_s=budget_s)
    reason = ladder.unavailable.get("primary", "")
    if reason and model_version is not None:
        ladder.close()
        raise ModelVersionError(f"primary model {version!r} in {directory} is unavailable: {reason}")
    return ladder, version

