"""A replay's durable state: its snapshotted range, kept in its own committed offsets.

Choice: no state topic. Every offset the replay commits — in the same Kafka
transaction as the scores it produced — carries, as its offset metadata
string, the partition's snapshotted range and the specs it came from:

    {"v": 1, "id": "<replay id>", "s": start, "e": end, "f": "<--from>", "t": "<--to>"}

Before the first record, the replay commits its whole plan (every partition's
start offset with that metadata) in one offsets-only transaction, so either
every partition of the plan is recorded or none is. A restart reads the replay
group's committed offsets: the metadata gives back the exact range, the offsets
say where to resume. The state lives and dies with the replay's consumer group
(`rung-replay-<id>`): deleting the group forgets the replay.

Everything here is pure; the runner does the I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from stream_app.replay.range import PartitionRange

STATE_VERSION = 1
GROUP_PREFIX = "rung-replay-"
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class ReplayStateError(RuntimeError):
    """The replay group's committed state conflicts with what was asked."""


def check_replay_id(replay_id: str) -> str:
    if not replay_id or len(replay_id) > 100 or not set(replay_id) <= _ID_CHARS:
        raise ValueError(f"replay id {replay_id!r}: use 1-100 characters of [A-Za-z0-9._-]")
    return replay_id


def replay_group_id(replay_id: str) -> str:
    return GROUP_PREFIX + check_replay_id(replay_id)


def replay_transactional_id(replay_id: str) -> str:
    """Stable per replay id: a restart fences the producer of a killed run."""
    return GROUP_PREFIX + check_replay_id(replay_id)


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    replay_id: str
    topic: str
    from_spec: str
    to_spec: str
    ranges: tuple[PartitionRange, ...]

    @property
    def total(self) -> int:
        return sum(r.size for r in self.ranges)

    def range_of(self, partition: int) -> PartitionRange:
        for r in self.ranges:
            if r.partition == partition:
                return r
        raise KeyError(partition)

    def metadata(self, partition: int) -> str:
        r = self.range_of(partition)
        return json.dumps({"v": STATE_VERSION, "id": self.replay_id, "s": r.start, "e": r.end,
                           "f": self.from_spec, "t": self.to_spec}, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Committed:
    """One partition's committed offset in the replay group (offset < 0: none)."""

    partition: int
    offset: int
    metadata: str | None


@dataclass(frozen=True, slots=True)
class Resume:
    plan: ReplayPlan
    positions: Mapping[int, int]  # where to continue reading, per planned partition

    @property
    def remaining(self) -> int:
        return sum(max(0, r.end - self.positions[r.partition]) for r in self.plan.ranges)

    @property
    def complete(self) -> bool:
        return self.remaining == 0


def load_resume(replay_id: str, topic: str, committed: Iterable[Committed],
                from_spec: str | None = None, to_spec: str | None = None) -> Resume | None:
    """The persisted plan and resume positions, or None for a fresh replay.

    `from_spec`/`to_spec` are what this run was asked for (None: not given);
    a stored plan made from other specs is refused rather than silently mixed.
    """
    rows = [c for c in committed if c.offset >= 0]
    if not rows:
        return None
    ranges: list[PartitionRange] = []
    positions: dict[int, int] = {}
    specs: set[tuple[str, str]] = set()
    for c in rows:
        state = _parse(c, replay_id)
        if state is None:
            continue
        start, end, stored = state
        r = PartitionRange(c.partition, start, end)
        ranges.append(r)
        positions[c.partition] = min(max(c.offset, r.start), r.end)
        specs.add(stored)
    if not ranges:
        raise ReplayStateError(
            f"group {replay_group_id(replay_id)} has committed offsets on {topic} that no "
            "replay wrote; choose another replay id")
    if len(specs) != 1:
        raise ReplayStateError(f"replay {replay_id}: partitions disagree on the range {specs}")
    (stored_from, stored_to), = specs
    for asked, kept, flag in ((from_spec, stored_from, "--from"), (to_spec, stored_to, "--to")):
        if asked is not None and asked != kept:
            raise ReplayStateError(
                f"replay {replay_id} was started with {flag} {kept!r}, not {asked!r}; "
                "a restart replays the stored range: drop the option or use a new replay id")
    plan = ReplayPlan(replay_id, topic, stored_from, stored_to,
                      tuple(sorted(ranges, key=lambda r: r.partition)))
    return Resume(plan, positions)


def _parse(c: Committed, replay_id: str) -> tuple[int, int, tuple[str, str]] | None:
    if not c.metadata:
        return None
    try:
        state = json.loads(c.metadata)
    except ValueError:
        return None
    if not isinstance(state, dict) or state.get("v") != STATE_VERSION:
        return None
    if state.get("id") != replay_id:
        raise ReplayStateError(f"partition {c.partition}: state of replay {state.get('id')!r} "
                               f"found in the group of replay {replay_id!r}")
    start, end = state.get("s"), state.get("e")
    if not isinstance(start, int) or not isinstance(end, int) or not 0 <= start <= end:
        return None
    return start, end, (str(state.get("f")), str(state.get("t")))
