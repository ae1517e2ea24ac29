"""The tier interface: what every rung of the ladder is, built-in or not.

A tier has a `name` (what `Score.tier`, reasons `f"{name}_{reason}"` and metrics
carry), the breakers it `needs` (names in the spec's breaker registry; `needs[0]`,
if any, is its own dependency, forced open when the tier is unavailable), the
fields it `requires` (a record with any of them bad is not eligible; None: every
field), whether it reads the batch's event feature rows, and `score`, which
answers some of the `rows` it is given and says why it failed the others. Rows it
neither answers nor fails stay open for the tiers below. `after` runs once the
batch's answers are fixed (cache write-back, ...); the default does nothing.

`score` may raise: the ladder logs and counts it and moves the rows down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from scorers.breakers import Breakers
from scorers.clock import Clock
from scorers.listeners import LadderListener
from scorers.models.manifest import Thresholds

if TYPE_CHECKING:
    from scorers.batch_view import BatchView
    from scorers.outcome import Outcomes

IntArray = npt.NDArray[np.intp]
FloatArray = npt.NDArray[np.float64]
_EMPTY = np.empty(0, dtype=np.intp)
DEFAULT_THRESHOLDS = Thresholds(review=0.5, block=0.9)


@dataclass(frozen=True, slots=True)
class TierContext:
    """Per ladder: what a tier may use besides the batch view."""

    clock: Clock
    listener: LadderListener  # already safe: never raises
    breakers: Breakers


@dataclass(slots=True)
class TierResult:
    """Records answered (indices into the batch) and records failed, with why."""

    idx: IntArray = field(default_factory=lambda: _EMPTY)
    scores: FloatArray = field(default_factory=lambda: np.empty(0))
    confidence: FloatArray = field(default_factory=lambda: np.empty(0))
    version: str = ""
    thresholds: Thresholds = DEFAULT_THRESHOLDS
    flags: npt.NDArray[np.bool_] | None = None  # extra review flags per answered record
    reasons: Sequence[tuple[str, ...]] | None = None  # extra reasons per answered record
    failed: list[tuple[IntArray, str]] = field(default_factory=list)
    # further answered groups, each with its own version and thresholds (a canary's rows)
    parts: list[TierResult] = field(default_factory=list)

    @classmethod
    def fail(cls, idx: IntArray, reason: str) -> TierResult:
        return cls(failed=[(idx, reason)] if idx.size else [])


class Tier(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def needs(self) -> tuple[str, ...]: ...

    @property
    def requires(self) -> frozenset[str] | None: ...

    @property
    def uses_event_rows(self) -> bool: ...

    @property
    def unavailable_reason(self) -> str: ...

    def score(self, view: BatchView, rows: IntArray, ctx: TierContext) -> TierResult: ...

    def after(self, view: BatchView, out: Outcomes, ctx: TierContext) -> None: ...


class BaseTier:
    """Defaults for the optional parts of `Tier`."""

    needs: tuple[str, ...] = ()
    requires: frozenset[str] | None = None
    uses_event_rows: bool = False
    unavailable_reason: str = ""

    def after(self, view: BatchView, out: Outcomes, ctx: TierContext) -> None:
        return None
