"""`rung replay compare`: how many decisions flip between two score topics, and which way.

Scores are matched by transaction id. Within one topic the last score of an id
(highest partition offset order as read) wins and the extra ones are counted
as duplicates, so a topic that several replays wrote to is still comparable
(filter it by replay id). The comparison itself is pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from topics.codec import decode_score
from topics.schemas import Action, Score

SEVERITY = {Action.ALLOW: 0, Action.REVIEW: 1, Action.BLOCK: 2}


@dataclass(frozen=True, slots=True)
class Side:
    """One topic's scores by transaction id."""

    actions: dict[str, Action]
    duplicates: int = 0
    skipped: int = 0  # records that were not scores, or of another replay id


@dataclass(frozen=True, slots=True)
class Comparison:
    matched: int
    only_a: int
    only_b: int
    transitions: dict[tuple[Action, Action], int] = field(default_factory=dict)
    duplicates_a: int = 0
    duplicates_b: int = 0

    @property
    def flipped(self) -> int:
        return sum(n for (a, b), n in self.transitions.items() if a is not b)

    @property
    def stricter(self) -> int:
        return sum(n for (a, b), n in self.transitions.items() if SEVERITY[b] > SEVERITY[a])

    @property
    def looser(self) -> int:
        return sum(n for (a, b), n in self.transitions.items() if SEVERITY[b] < SEVERITY[a])

    def flips(self) -> list[tuple[Action, Action, int]]:
        """Every (from, to, count) with from != to, most frequent first."""
        rows = [(a, b, n) for (a, b), n in self.transitions.items() if a is not b]
        return sorted(rows, key=lambda r: (-r[2], SEVERITY[r[0]], SEVERITY[r[1]]))


def collect(scores: Iterable[Score | None], replay_id: str | None = None) -> Side:
    """Index scores by transaction id; None entries (undecodable) are counted as skipped."""
    actions: dict[str, Action] = {}
    duplicates = skipped = 0
    for score in scores:
        if score is None or (replay_id is not None and score.replay_id != replay_id):
            skipped += 1
            continue
        if score.transaction_id in actions:
            duplicates += 1
        actions[score.transaction_id] = score.action
    return Side(actions, duplicates, skipped)


def compare(a: Side, b: Side) -> Comparison:
    transitions: Counter[tuple[Action, Action]] = Counter()
    for tx_id, action_a in a.actions.items():
        action_b = b.actions.get(tx_id)
        if action_b is not None:
            transitions[(action_a, action_b)] += 1
    matched = sum(transitions.values())
    return Comparison(matched, len(a.actions) - matched, len(b.actions) - matched,
                      dict(transitions), a.duplicates, b.duplicates)


def decode_or_none(value: bytes | None) -> Score | None:
    if not value:
        return None
    try:
        return decode_score(value)
    except (ValueError, KeyError, TypeError):
        return None


def read_side(client_conf: dict[str, Any], topic: str, replay_id: str | None = None,
              timeout_s: float = 120.0) -> Side:
    """Read a score topic to its end (read_committed) and index it."""
    from stream_app.kafka.readback import read_topic

    records = read_topic(client_conf, topic, timeout_s)
    return collect((decode_or_none(r.value) for r in records), replay_id)
