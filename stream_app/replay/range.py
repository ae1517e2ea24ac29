"""What a replay reads: `--from`/`--to` specs and the snapshotted offset range.

A bound is parsed once, against an injected "now", into a `Bound`; resolving
it against a partition's watermarks (and, for timestamps, the offset that
`offsets_for_times` returned) gives an offset. The range of a partition is
`[start, end)`; `end` is fixed when the replay starts, so a replay is bounded
even while producers keep writing.

Spec grammar (both options):

- `earliest` — the partition's low watermark;
- `now` / `latest` — the high watermark at the start of the replay;
- `offset:N` — offset N in every partition (clamped to the watermarks);
- `ts:MS` — epoch milliseconds;
- an ISO-8601 time (`2025-03-01T12:00:00Z`, naive times are UTC);
- a relative time before now: `-30s`, `-15m`, `-2h`, `-1d`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

BoundKind = Literal["earliest", "now", "offset", "timestamp"]
_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class RangeSpecError(ValueError):
    """A `--from`/`--to` value that cannot be understood."""


@dataclass(frozen=True, slots=True)
class Bound:
    kind: BoundKind
    value: int = 0  # the offset (kind "offset") or epoch milliseconds (kind "timestamp")


@dataclass(frozen=True, slots=True)
class PartitionRange:
    partition: int
    start: int  # first offset to read
    end: int  # first offset not to read (snapshotted)

    @property
    def size(self) -> int:
        """Offsets in the range: the record count unless the topic is compacted or
        transactional (then control markers and gaps make it an upper bound)."""
        return max(0, self.end - self.start)


def parse_bound(spec: str, now_ms: int) -> Bound:
    text = spec.strip()
    low = text.lower()
    if low in ("earliest", "beginning"):
        return Bound("earliest")
    if low in ("now", "latest", "end"):
        return Bound("now")
    if low.startswith("offset:"):
        return Bound("offset", _non_negative_int(text[7:], spec))
    if low.startswith("ts:"):
        return Bound("timestamp", _non_negative_int(text[3:], spec))
    rel = _RELATIVE.match(low)
    if rel:
        back_ms = int(float(rel.group(1)) * _UNIT_S[rel.group(2)] * 1000)
        return Bound("timestamp", max(0, now_ms - back_ms))
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RangeSpecError(
            f"cannot read {spec!r}: use earliest, now, offset:N, ts:EPOCH_MS, an ISO-8601 "
            "time or -30s/-15m/-2h/-1d") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return Bound("timestamp", int(when.timestamp() * 1000))


def _non_negative_int(text: str, spec: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise RangeSpecError(f"{spec!r}: expected an integer after the colon") from None
    if value < 0:
        raise RangeSpecError(f"{spec!r}: must not be negative")
    return value


def bound_offset(bound: Bound, low: int, high: int, time_offset: int | None = None) -> int:
    """The offset a bound names in one partition with watermarks [low, high).

    `time_offset` is what `offsets_for_times` answered for a timestamp bound: the
    first offset at or after the time, or a negative value when there is none
    (then the range ends at the high watermark).
    """
    if bound.kind == "earliest":
        return low
    if bound.kind == "now":
        return high
    if bound.kind == "offset":
        return min(max(bound.value, low), high)
    if time_offset is None:
        raise ValueError("a timestamp bound needs the offset offsets_for_times returned")
    if time_offset < 0:
        return high
    return min(max(time_offset, low), high)


def partition_range(partition: int, start: Bound, end: Bound, low: int, high: int,
                    start_time_offset: int | None = None,
                    end_time_offset: int | None = None) -> PartitionRange:
    first = bound_offset(start, low, high, start_time_offset)
    last = bound_offset(end, low, high, end_time_offset)
    return PartitionRange(partition, first, max(first, last))
