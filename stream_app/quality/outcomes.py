"""What a joined (score, label) pair counts as, and the counts per tier and model version."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from topics.schemas import Action, Score

Outcome = Literal["tp", "fp", "fn", "tn"]


def is_alert(score: Score) -> bool:
    """An alert: the score asks for a review or a block, or flags the record for review."""
    return score.action in (Action.REVIEW, Action.BLOCK) or score.flag_for_review


def outcome(alert: bool, fraud: bool) -> Outcome:
    if alert:
        return "tp" if fraud else "fp"
    return "fn" if fraud else "tn"


@dataclass(frozen=True, slots=True)
class ScoreFacts:
    """What the join keeps of a score: enough to count it, nothing more."""

    tier: str
    model_version: str
    score: float
    alert: bool

    @classmethod
    def of(cls, score: Score) -> ScoreFacts:
        return cls(str(score.tier), score.model_version, score.score, is_alert(score))


@dataclass(slots=True)
class OutcomeCounts:
    """Joined pairs of one (tier, model_version): the confusion matrix and what follows."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, o: Outcome, n: int = 1) -> None:
        setattr(self, o, getattr(self, o) + n)

    @property
    def labelled(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def frauds(self) -> int:
        return self.tp + self.fn

    @property
    def alerts(self) -> int:
        return self.tp + self.fp

    @property
    def precision(self) -> float | None:
        """Among alerted labelled scores, the share that were fraud (None with no alerts)."""
        return self.tp / self.alerts if self.alerts else None

    @property
    def recall(self) -> float | None:
        """Among labelled frauds, the share that were alerted (None with no frauds)."""
        return self.tp / self.frauds if self.frauds else None

    @property
    def alert_rate(self) -> float | None:
        return self.alerts / self.labelled if self.labelled else None

    def as_dict(self) -> dict[str, int | float | None]:
        return {"labelled": self.labelled, "frauds": self.frauds, "alerts": self.alerts,
                "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn,
                "precision": self.precision, "recall": self.recall,
                "alert_rate": self.alert_rate}
