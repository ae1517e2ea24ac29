"""Event-time budgets in the pipeline: which records are shed and why (fake clock)."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pytest

from scorers.clock import FakeClock
from scorers.deadline import Deadline
from stream_app.kafka.records import SourceRecord
from stream_app.pipeline import BatchContext, Routing, prepare_batch, shed_reasons
from topics.schemas import Action, Score, Tier, Transaction

WALL = 1_700_000_000.0


class ShedScorer:
    def __init__(self) -> None:
        self.shed: list[Sequence[str] | None] = []

    def score_batch(self, txs: Sequence[Transaction], deadline: Deadline,
                    shed: Sequence[str] | None = None) -> list[Score]:
        self.shed.append(None if shed is None else list(shed))
        return [Score(t.transaction_id, 0.1, Action.ALLOW, False, Tier.FALLBACK, "f", 0.5, (),
                      0.0, 0.0) for t in txs]


def _rec(offset: int, ts: float | None) -> SourceRecord:
    value = orjson.dumps({"transaction_id": f"t{offset}", "amount": 1.0})
    return SourceRecord("in", 0, offset, b"k", value, ts)


def test_shed_reasons_split_late_on_arrival_from_late_inside_rung() -> None:
    reasons = shed_reasons([WALL - 0.5, WALL - 1.1, WALL - 2.0, None, WALL - 1.0],
                           now_wall_s=WALL, received_wall_s=WALL - 0.3, budget_s=1.0)
    assert reasons == ["", "overload", "late", "", "overload"]  # at the budget: shed
    assert shed_reasons([WALL, None], now_wall_s=WALL, received_wall_s=WALL,
                        budget_s=1.0) is None


@pytest.mark.parametrize(("event_budget_s", "expected"), [
    (1.0, [["", "overload", "late", ""]]),  # a dead letter in between is not scored
    (None, [None]),  # replay and backfills: no event budget, nothing shed
])
def test_prepare_batch_sheds_by_kafka_timestamp_with_the_clock_it_is_given(
        event_budget_s: float | None, expected: list[list[str] | None]) -> None:
    clock = FakeClock(wall_start_s=WALL)
    scorer = ShedScorer()
    ctx = BatchContext(scorer=scorer, routing=Routing("s", "d", None), sink=None,  # type: ignore[arg-type]
                       clock=clock, budget_s=0.1, event_budget_s=event_budget_s)
    records = [_rec(0, WALL - 0.5), _rec(1, WALL - 1.1),
               SourceRecord("in", 0, 2, b"k", b"\xff", WALL - 9.0), _rec(3, WALL - 2.0),
               _rec(4, None)]
    prepared = prepare_batch(records, clock.monotonic() - 0.3, ctx)
    assert scorer.shed == expected
    assert prepared.shed == (2 if event_budget_s else 0)
    assert len(prepared.scores) == 4 and len(prepared.decoded.dead) == 1
