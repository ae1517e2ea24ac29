"""Per-batch outcome buffer: which tier answered each record, turned into `Score`s.

The ladder assigns groups of records (index arrays) to a tier with vectorised
scores; `to_scores` builds one frozen `Score` per record at the end. Actions
come from the answering tier's thresholds (as the batch's policy sets them);
confidence is defined per tier (models: |2p - 1|, rules: a constant, default: 0).
`escalate` raises answered records to at least `review` (a policy review rule);
every score carries the batch's policy version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from scorers.models.manifest import Thresholds
from topics.schemas import Action, Score, Tier, Transaction

DEFAULT_VERSION: Final = "default"
DEFAULT_REASON: Final = "default"
IntArray = npt.NDArray[np.intp]
_ACTIONS: Final = (Action.ALLOW, Action.REVIEW, Action.BLOCK)


def model_confidence(probs: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Distance from the undecided point 0.5, scaled to 0..1."""
    return np.abs(2.0 * probs.astype(np.float64) - 1.0)


def action_codes(scores: npt.NDArray[np.float64], t: Thresholds) -> npt.NDArray[np.int8]:
    codes = np.zeros(len(scores), dtype=np.int8)
    codes[scores >= t.review] = 1
    codes[scores >= t.block] = 2
    return codes


class Outcomes:
    """Mutable, batch-local: every record starts unanswered with an empty reason trail."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.answered = np.zeros(n, dtype=np.bool_)
        self.tier: list[str | None] = [None] * n
        self.version: list[str] = [DEFAULT_VERSION] * n
        self.score = np.zeros(n, dtype=np.float64)
        self.confidence = np.zeros(n, dtype=np.float64)
        self.action = np.zeros(n, dtype=np.int8)
        self.flag = np.zeros(n, dtype=np.bool_)
        self.trail: list[tuple[str, ...]] = [()] * n

    def note(self, idx: Sequence[int] | IntArray, reason: str) -> None:
        for i in idx:
            self.trail[i] = (*self.trail[i], reason)

    def note_each(self, idx: Sequence[int] | IntArray, reasons: Sequence[tuple[str, ...]]) -> None:
        for i, extra in zip(idx, reasons, strict=True):
            if extra:
                self.trail[i] = (*self.trail[i], *extra)

    def assign(self, idx: IntArray, tier: str, version: str, scores: npt.NDArray[np.floating],
               confidence: npt.NDArray[np.floating], thresholds: Thresholds,
               flag: npt.NDArray[np.bool_] | None = None) -> None:
        if len(idx) == 0:
            return
        if self.answered[idx].any():
            raise RuntimeError(f"{tier}: record answered twice")
        s = scores.astype(np.float64)
        codes = action_codes(s, thresholds)
        self.answered[idx] = True
        self.score[idx] = s
        self.confidence[idx] = confidence
        self.action[idx] = codes
        self.flag[idx] = (codes == 1) | (False if flag is None else flag)
        for i in idx.tolist():
            self.tier[i] = tier
            self.version[i] = version

    def escalate(self, idx: IntArray, reason: str) -> None:
        """At least `review` and flagged for the answered records of `idx`, with `reason`."""
        idx = idx[self.answered[idx]]
        if not idx.size:
            return
        self.action[idx] = np.maximum(self.action[idx], 1)
        self.flag[idx] = True
        self.note(idx, reason)

    def unanswered(self) -> IntArray:
        return np.flatnonzero(~self.answered)

    def to_scores(self, txs: Sequence[Transaction], latency_s: float,
                  scored_at_s: float, policy_version: str | None = None) -> list[Score]:
        out: list[Score] = []
        scores, conf = self.score.tolist(), self.confidence.tolist()
        actions, flags = self.action.tolist(), self.flag.tolist()
        for i, tx in enumerate(txs):
            tier = self.tier[i]
            if tier is None:  # the safe default: a constant, no computation
                out.append(Score(tx.transaction_id, 0.0, Action.ALLOW, True, Tier.DEFAULT,
                                 DEFAULT_VERSION, 0.0, (*self.trail[i], DEFAULT_REASON),
                                 latency_s, scored_at_s, policy_version=policy_version))
                continue
            out.append(Score(tx.transaction_id, scores[i], _ACTIONS[actions[i]], flags[i], tier,
                             self.version[i], conf[i], self.trail[i], latency_s, scored_at_s,
                             policy_version=policy_version))
        return out
