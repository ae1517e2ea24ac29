"""`process_batch` without a broker: a fake scorer, a fake sink, a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pytest

from scorers.clock import FakeClock
from scorers.deadline import Deadline
from stream_app import faust_runtime, pipeline
from stream_app.config import Settings
from stream_app.kafka.errors import FatalError
from stream_app.kafka.records import HEADER_REPLAY_ID, OutRecord, SourceRecord
from stream_app.live import worker as worker_mod
from stream_app.pipeline import BatchContext, Routing, process_batch
from stream_app.replay import run as replay_mod
from topics.codec import decode_dead_letter, decode_score
from topics.schemas import Action, Score, Tier, Transaction

TOPIC = "t.transactions"
LIVE = Routing("t.scores", "t.dead-letter", "t.review")
REPLAY = Routing("out", "out.dead-letter", None, replay_id="r7")


class Scorer:
    """Blocks amounts over 100; can drop one answer or raise."""

    def __init__(self, *, drop_one: bool = False, boom: bool = False) -> None:
        self.deadlines: list[Deadline] = []
        self.drop_one, self.boom = drop_one, boom

    def score_batch(self, txs: Sequence[Transaction], deadline: Deadline) -> list[Score]:
        self.deadlines.append(deadline)
        if self.boom:
            raise RuntimeError("CUDA error")
        out = [Score(t.transaction_id, 0.9 if (t.amount or 0) > 100 else 0.1,
                     Action.BLOCK if (t.amount or 0) > 100 else Action.ALLOW, False,
                     Tier.PRIMARY, "p-1", 0.9, (), 0.0, 0.0) for t in txs]
        return out[:-1] if self.drop_one else out


class Sink:
    def __init__(self, abort: bool = False) -> None:
        self.abort = abort
        self.commits: list[tuple[list[OutRecord], list[SourceRecord]]] = []

    def commit(self, records: Sequence[OutRecord],
               batch: Sequence[SourceRecord]) -> Mapping[str, float] | None:
        self.commits.append((list(records), list(batch)))
        return None if self.abort else {"produce": 0.001, "commit": 0.002}


class Metrics:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.append((name, args))


def _rec(offset: int, value: bytes | None, partition: int = 0) -> SourceRecord:
    return SourceRecord(TOPIC, partition, offset, f"k{offset}".encode(), value)


def _tx(tx_id: str, amount: float) -> bytes:
    return orjson.dumps({"transaction_id": tx_id, "amount": amount, "currency": "EUR"})


def _batch() -> list[SourceRecord]:
    return [_rec(0, _tx("a", 5.0)), _rec(1, _tx("b", 500.0)), _rec(2, b"\xff nope"),
            _rec(3, None, partition=1), _rec(4, _tx("c", 7.0))]


def _ctx(scorer: Any = None, sink: Any = None, routing: Routing = LIVE,
         metrics: Any = None, budget_s: float = 0.25) -> BatchContext:
    return BatchContext(scorer=scorer or Scorer(), routing=routing, sink=sink or Sink(),
                        clock=FakeClock(), budget_s=budget_s, metrics=metrics)


def test_every_record_gets_one_answer_bad_bytes_dead_lettered_reviews_routed() -> None:
    sink, metrics = Sink(), Metrics()
    outcome = process_batch(_batch(), 999.0, _ctx(sink=sink, metrics=metrics))
    assert outcome.committed and outcome.records == 5
    assert len(outcome.scores) + outcome.dead_letters == 5 and outcome.reviews == 1
    (out, batch), = sink.commits
    assert batch == _batch()
    by_topic: dict[str, list[OutRecord]] = {}
    for r in out:
        by_topic.setdefault(r[0], []).append(r)
    assert [r[1] for r in by_topic["t.scores"]] == [b"a", b"b", b"c"]
    assert [r[1] for r in by_topic["t.review"]] == [b"b"]
    dls = [decode_dead_letter(r[2]) for r in by_topic["t.dead-letter"]]
    assert [(d.source_partition, d.source_offset, d.original_value) for d in dls] == [
        (0, 2, b"\xff nope"), (1, 3, None)]
    assert ("records_in", (TOPIC, 5)) in metrics.calls
    assert ("dead_lettered", ("decode", 2)) in metrics.calls
    assert ("reviewed", (1,)) in metrics.calls
    assert ("scores_out", ("primary", "p-1", 3)) in metrics.calls
    stages = {args[0] for name, args in metrics.calls if name == "stage_duration"}
    assert stages == {"decode", "produce", "commit"}


def test_replay_routing_tags_scores_and_sends_no_review_copies() -> None:
    sink = Sink()
    outcome = process_batch(_batch(), 999.0, _ctx(sink=sink, routing=REPLAY))
    (out, _), = sink.commits
    assert {r[0] for r in out} == {"out", "out.dead-letter"} and outcome.reviews == 0
    scores = [r for r in out if r[0] == "out"]
    assert {decode_score(r[2]).replay_id for r in scores} == {"r7"}
    assert all(dict(r[3])[HEADER_REPLAY_ID] == b"r7" for r in scores)
    assert {s.replay_id for s in outcome.scores} == {"r7"}


def test_an_aborted_commit_accounts_nothing() -> None:
    metrics = Metrics()
    outcome = process_batch(_batch(), 999.0, _ctx(sink=Sink(abort=True), metrics=metrics))
    assert not outcome.committed and metrics.calls == []


@pytest.mark.parametrize("scorer", [Scorer(drop_one=True), Scorer(boom=True)])
def test_a_scorer_that_breaks_its_contract_is_fatal_and_nothing_is_committed(
        scorer: Scorer) -> None:
    sink, metrics = Sink(), Metrics()
    with pytest.raises(FatalError, match="scorer"):
        process_batch(_batch(), 999.0, _ctx(scorer=scorer, sink=sink, metrics=metrics))
    assert sink.commits == [] and metrics.calls == []


def test_the_deadline_is_first_receipt_plus_budget() -> None:
    scorer = Scorer()
    ctx = _ctx(scorer=scorer, budget_s=0.25)
    now = ctx.clock.monotonic()
    outcome = process_batch(_batch(), now - 0.1, ctx)
    (deadline,) = scorer.deadlines
    assert deadline.expires_at_s == pytest.approx(now + 0.15) == outcome.deadline.expires_at_s
    assert deadline.remaining() == pytest.approx(0.15)


def test_a_batch_of_dead_letters_only_does_not_call_the_scorer() -> None:
    scorer, sink = Scorer(), Sink()
    outcome = process_batch([_rec(0, b"{")], 999.0, _ctx(scorer=scorer, sink=sink))
    assert scorer.deadlines == [] and outcome.dead_letters == 1 and len(sink.commits) == 1


# ---- every runtime calls the one pipeline --------------------------------------------
def test_the_three_runtimes_import_the_one_process_batch() -> None:
    # the live worker runs its two halves on two threads (pipelined commits)
    assert worker_mod.prepare_batch is pipeline.prepare_batch
    assert worker_mod.commit_batch is pipeline.commit_batch
    assert replay_mod.prepare_batch is pipeline.prepare_batch  # pipelined like the worker
    assert replay_mod.commit_batch is pipeline.commit_batch
    assert faust_runtime.process_batch is pipeline.process_batch


class _Spy:
    def __init__(self) -> None:
        self.calls: list[tuple[list[SourceRecord], float]] = []

    def __call__(self, records: Sequence[SourceRecord], first_received_s: float,
                 ctx: BatchContext) -> pipeline.BatchOutcome:
        self.calls.append((list(records), first_received_s))
        return pipeline.BatchOutcome(True, len(records), [], 0, 0,
                                     pipeline.batch_deadline(ctx.clock, first_received_s,
                                                             ctx.budget_s), 0.0)


class _Msg:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return _tx(f"x{self._offset}", 1.0)

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)  # CreateTime, ms

    def headers(self) -> None:
        return None


def test_each_runtime_batch_step_goes_through_process_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _Spy()
    monkeypatch.setattr(faust_runtime, "process_batch", spy)
    prepared: list[float] = []

    def prepare(records: Sequence[SourceRecord], first_received_s: float,
                ctx: BatchContext) -> pipeline.PreparedBatch:
        prepared.append(first_received_s)
        return pipeline.prepare_batch(records, first_received_s, ctx)

    monkeypatch.setattr(worker_mod, "prepare_batch", prepare)
    settings = Settings(topics={"prefix": "t"})
    clock = FakeClock()

    w = worker_mod.Worker(settings, Scorer(), clock=clock)
    w._ctx = _ctx()
    w.batcher.add(_Msg(0), 5.0)
    w.batcher.add(_Msg(1), 6.0)
    (batch,) = w.batcher.flush(7.0)
    assert w._process(batch)
    w._settle(block=True)
    assert prepared == [5.0] and w.records_committed == 2 and w.batcher.in_flight == 0

    # the replay's loop (prepare_batch, then commit_batch on its committer thread) is
    # covered by tests/unit/stream_app/test_replay_pipelined.py

    class Message:
        topic, partition, offset, key, value = TOPIC, 0, 9, b"k", b"v"
        headers = None

        def incref(self) -> None:
            pass

    class Event:
        message = Message()

        def ack(self) -> bool:
            return True

    rt = faust_runtime.FaustRuntime(settings, Scorer(), clock=clock)
    asyncio.run(rt.process([Event()]))
    assert spy.calls[-1] == ([SourceRecord(TOPIC, 0, 9, b"k", b"v")], clock.monotonic())
    assert rt.records_committed == 1


def test_sigterm_only_sets_a_flag_and_the_loop_arms_shutdown_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    handlers: dict[int, Any] = {}
    armed: list[float] = []
    monkeypatch.setattr(worker_mod.signal, "signal", lambda s, h: handlers.__setitem__(s, h))
    monkeypatch.setattr(worker_mod.watchdogs, "start_shutdown_watchdog", armed.append)
    w = worker_mod.Worker(Settings(), Scorer(), shutdown_timeout_s=7.0)
    w.install_signal_handlers()
    assert not w._notice_signal()
    handlers[worker_mod.signal.SIGTERM](worker_mod.signal.SIGTERM, None)
    assert not w._stop.is_set() and armed == []  # the handler did nothing else
    assert w._notice_signal() and w._notice_signal()
    assert w._stop.is_set() and armed == [7.0]
