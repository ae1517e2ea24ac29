"""The primary tier's model as data: a `ModelSlot` behind a `ModelSwitch`.

A `ModelSlot` is a frozen value: the champion model and, optionally, a `Canary`
(a candidate model, the fraction of entities routed to it and the routing key,
see `scorers.models.canary`). The primary tier is built with a `ModelSwitch` and
reads `switch.slot` exactly once per batch: every row of a batch is answered by
the slot that was current when the batch started, and publishing a new slot
(`switch.publish`) is one reference assignment, so a swap lands between batches.
Whoever publishes (the live worker's model watch, `stream_app.live.model_watch`)
does it on the scoring thread between batches; loading, checksum and warm-up
happen elsewhere, before.

The tier also reports what each model version did with its rows into
`switch.stats` (`SlotStats`: counts, forward seconds, answered scores per version),
which the publisher drains between batches for per-version metrics and the canary's
rollback rule. The core never imports the edge: this is plain data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from scorers.models.canary import DEFAULT_KEY, ROUTING_KEYS, Counts, on_candidate
from scorers.ports import Model
from topics.schemas import Transaction


@dataclass(frozen=True, slots=True)
class Canary:
    model: Model
    fraction: float  # of entities (by `key`), in [0, 1]
    key: str = DEFAULT_KEY

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"canary fraction must be within [0, 1], not {self.fraction}")
        if self.key not in ROUTING_KEYS:
            raise ValueError(f"canary key must be one of {sorted(ROUTING_KEYS)}, not {self.key!r}")


@dataclass(frozen=True, slots=True)
class ModelSlot:
    champion: Model | None
    canary: Canary | None = None

    @property
    def versions(self) -> tuple[str, str]:
        """(champion version, candidate version or "")."""
        champ = self.champion.version if self.champion is not None else ""
        return champ, (self.canary.model.version if self.canary is not None else "")

    def candidate_mask(self, txs: Sequence[Transaction]) -> npt.NDArray[np.bool_]:
        """Per record: routed to the canary's candidate (all False without a canary)."""
        c = self.canary
        if c is None or c.fraction <= 0.0:
            return np.zeros(len(txs), dtype=np.bool_)
        return np.fromiter((on_candidate(tx, c.key, c.fraction) for tx in txs),
                           dtype=np.bool_, count=len(txs))


@dataclass(slots=True)
class VersionStats:
    counts: Counts = field(default_factory=Counts)
    forward_s: list[float] = field(default_factory=list)  # one per model call group
    scores: list[npt.NDArray[np.float64]] = field(default_factory=list)


class SlotStats:
    """Per model version, since the last `drain`: what the primary tier did. Off (records
    nothing) until someone that drains it turns it on: nothing grows unread."""

    def __init__(self) -> None:
        self._by_version: dict[str, VersionStats] = {}
        self.enabled = False

    def record(self, version: str, *, routed: int, answered: int, review: int, failed: int,
               forward_s: float, scores: npt.NDArray[np.float64]) -> None:
        if not self.enabled:
            return
        s = self._by_version.setdefault(version, VersionStats())
        s.counts.add(Counts(routed, answered, review, failed))
        s.forward_s.append(forward_s)
        if scores.size:
            s.scores.append(scores)

    def drain(self) -> dict[str, VersionStats]:
        out, self._by_version = self._by_version, {}
        return out


class ModelSwitch:
    """The explicit switch a primary tier is built with: the current slot and stats."""

    def __init__(self, slot: ModelSlot) -> None:
        self.slot = slot
        self.stats = SlotStats()
        self.generation = 0  # publications so far

    def publish(self, slot: ModelSlot) -> ModelSlot:
        """Make `slot` current (call between batches, on the scoring thread); returns the
        previous one."""
        old, self.slot = self.slot, slot
        self.generation += 1
        return old
