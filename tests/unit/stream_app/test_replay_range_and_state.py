"""Replay range specs, range resolution and the state kept in offset metadata (no broker)."""

from __future__ import annotations

import json

import pytest

from stream_app.replay.range import (
    Bound,
    PartitionRange,
    RangeSpecError,
    bound_offset,
    parse_bound,
    partition_range,
)
from stream_app.replay.state import (
    Committed,
    ReplayPlan,
    ReplayStateError,
    check_replay_id,
    load_resume,
    replay_group_id,
    replay_transactional_id,
)

NOW_MS = 1_700_000_000_000


@pytest.mark.parametrize(("spec", "bound"), [
    ("earliest", Bound("earliest")),
    ("now", Bound("now")),
    ("LATEST", Bound("now")),
    ("offset:42", Bound("offset", 42)),
    ("ts:1699999999000", Bound("timestamp", 1_699_999_999_000)),
    ("-15m", Bound("timestamp", NOW_MS - 15 * 60_000)),
    ("-2h", Bound("timestamp", NOW_MS - 2 * 3_600_000)),
    ("-1.5d", Bound("timestamp", NOW_MS - 129_600_000)),
    ("-30s", Bound("timestamp", NOW_MS - 30_000)),
    ("2023-11-14T22:13:20Z", Bound("timestamp", 1_700_000_000_000)),
    ("2023-11-14T22:13:20", Bound("timestamp", 1_700_000_000_000)),
    ("2023-11-14T23:13:20+01:00", Bound("timestamp", 1_700_000_000_000)),
])
def test_specs_parse(spec: str, bound: Bound) -> None:
    assert parse_bound(spec, NOW_MS) == bound


@pytest.mark.parametrize("spec", ["yesterday", "offset:x", "offset:-3", "ts:", "-5w", ""])
def test_bad_specs_are_refused_with_the_grammar(spec: str) -> None:
    with pytest.raises(RangeSpecError):
        parse_bound(spec, NOW_MS)


def test_bounds_resolve_against_watermarks() -> None:
    low, high = 100, 500
    assert bound_offset(Bound("earliest"), low, high) == 100
    assert bound_offset(Bound("now"), low, high) == 500
    assert bound_offset(Bound("offset", 7), low, high) == 100  # trimmed by retention
    assert bound_offset(Bound("offset", 9_999), low, high) == 500
    assert bound_offset(Bound("offset", 250), low, high) == 250
    ts = Bound("timestamp", NOW_MS)
    assert bound_offset(ts, low, high, 321) == 321
    assert bound_offset(ts, low, high, -1) == 500  # nothing at or after the time
    with pytest.raises(ValueError):
        bound_offset(ts, low, high)


def test_a_range_never_runs_backwards() -> None:
    r = partition_range(3, Bound("offset", 400), Bound("offset", 200), 0, 1000)
    assert r == PartitionRange(3, 400, 400) and r.size == 0
    r = partition_range(1, Bound("timestamp", 5), Bound("now"), 10, 90, start_time_offset=40)
    assert (r.start, r.end, r.size) == (40, 90, 50)


def _plan() -> ReplayPlan:
    return ReplayPlan("bf-1", "rung.transactions", "-1h", "now",
                      (PartitionRange(0, 10, 20), PartitionRange(1, 0, 5)))


def test_plan_metadata_round_trips_through_committed_offsets() -> None:
    plan = _plan()
    assert len(plan.metadata(0)) < 200  # well under offset.metadata.max.bytes
    committed = [Committed(0, 15, plan.metadata(0)), Committed(1, 0, plan.metadata(1))]
    resume = load_resume("bf-1", plan.topic, committed)
    assert resume is not None
    assert resume.plan == plan
    assert dict(resume.positions) == {0: 15, 1: 0}
    assert resume.remaining == 5 + 5 and not resume.complete
    done = load_resume("bf-1", plan.topic, [Committed(0, 20, plan.metadata(0)),
                                            Committed(1, 5, plan.metadata(1))])
    assert done is not None and done.complete and done.remaining == 0


def test_no_committed_offsets_means_a_fresh_replay() -> None:
    assert load_resume("bf-1", "t", [Committed(0, -1001, None), Committed(1, -1001, "")]) is None


def test_a_restart_with_other_specs_is_refused() -> None:
    plan = _plan()
    committed = [Committed(p, 10, plan.metadata(p)) for p in (0, 1)]
    assert load_resume("bf-1", plan.topic, committed, "-1h", "now") is not None
    with pytest.raises(ReplayStateError, match="--from '-1h'"):
        load_resume("bf-1", plan.topic, committed, "-2h", None)
    with pytest.raises(ReplayStateError, match="--to 'now'"):
        load_resume("bf-1", plan.topic, committed, None, "ts:5")


def test_foreign_group_state_is_refused() -> None:
    with pytest.raises(ReplayStateError, match="no replay wrote"):
        load_resume("bf-1", "t", [Committed(0, 12, ""), Committed(1, 3, "app-meta")])
    other = ReplayPlan("other", "t", "earliest", "now", (PartitionRange(0, 0, 9),))
    with pytest.raises(ReplayStateError, match="other"):
        load_resume("bf-1", "t", [Committed(0, 3, other.metadata(0))])


def test_partitions_added_after_the_snapshot_are_not_in_the_plan() -> None:
    plan = _plan()
    committed = [Committed(0, 10, plan.metadata(0)), Committed(1, 0, plan.metadata(1)),
                 Committed(2, -1001, None)]
    resume = load_resume("bf-1", plan.topic, committed)
    assert resume is not None and [r.partition for r in resume.plan.ranges] == [0, 1]


def test_positions_are_clamped_into_the_range() -> None:
    plan = _plan()
    meta = json.loads(plan.metadata(0))
    assert meta == {"v": 1, "id": "bf-1", "s": 10, "e": 20, "f": "-1h", "t": "now"}
    resume = load_resume("bf-1", plan.topic, [Committed(0, 99, plan.metadata(0)),
                                              Committed(1, 0, plan.metadata(1))])
    assert resume is not None and resume.positions[0] == 20


def test_replay_ids_name_their_own_group_and_transactional_id() -> None:
    assert replay_group_id("bf-2025.03") == "rung-replay-bf-2025.03"
    assert replay_transactional_id("x") == "rung-replay-x"
    for bad in ("", "a b", "a/b", "x" * 101):
        with pytest.raises(ValueError):
            check_replay_id(bad)
