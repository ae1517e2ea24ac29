"""The pipelined replay loop without a broker: batch N commits on the committer thread
while N+1 is consumed and scored; an abort discards N+1 and rewinds; a stop waits for
the commit in flight; the stored range stays exact.

The in-memory broker, consumer and scorer are those of `test_replay_loop`; the
committer here can hold a commit until the loop has scored the next batch (events,
no sleeps), abort chosen commits or fail fatally. `LazySeekConsumer` applies a seek
only at the next `consume()`, as librdkafka does (its seek is asynchronous).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pytest
from confluent_kafka import TopicPartition

from scorers.clock import FakeClock
from scorers.deadline import Deadline
from stream_app.config import Settings
from stream_app.kafka.errors import FatalError
from stream_app.kafka.pipelined import CommitPipeline, rewind_offsets
from stream_app.kafka.records import SourceRecord
from stream_app.replay import run as replay_mod
from stream_app.replay.run import Replay, ReplayOptions, ReplaySummary
from tests.unit.stream_app.test_replay_loop import (
    TOPIC,
    Broker,
    FakeConsumer,
    Msg,
    Scorer,
    answered_keys,
    make_broker,
)
from topics.schemas import Score, Transaction

WAIT_S = 10.0  # generous: the machine is shared


class CountingScorer(Scorer):
    """Counts the batches it scored; `on_batch(n)` runs before it answers batch n."""

    def __init__(self, on_batch: Callable[[int], None] | None = None) -> None:
        self.batches: list[int] = []
        self.scored = threading.Condition()
        self.on_batch = on_batch

    def score_batch(self, txs: Sequence[Transaction], deadline: Deadline,
                    shed: Sequence[str] | None = None) -> list[Score]:
        with self.scored:
            self.batches.append(len(txs))
            self.scored.notify_all()
        if self.on_batch is not None:
            self.on_batch(len(self.batches))
        return super().score_batch(txs, deadline)

    def wait_for(self, n: int) -> bool:
        with self.scored:
            return self.scored.wait_for(lambda: len(self.batches) >= n, timeout=WAIT_S)


class PipelineCommitter:
    """Commits into the broker. Commit 0 records the plan, the last one the end offsets.
    `hold`: data commits 1..hold (commit k holds batch k) each wait until the scorer
    has scored batch k+1; `abort`: commit numbers that abort (outputs dropped, offsets
    kept, and no seek: the replay's sink never rewinds, the loop does); `fatal_at`:
    that commit raises FatalError."""

    def __init__(self, broker: Broker, scorer: CountingScorer | None = None, *,
                 hold: int = 0, abort: Sequence[int] = (),
                 fatal_at: int | None = None) -> None:
        self.b, self.scorer = broker, scorer
        self.hold, self.abort, self.fatal_at = hold, set(abort), fatal_at
        self.last_produce_s = self.last_commit_s = 0.0
        self.threads: set[str] = set()
        self.overlapped: list[bool] = []

    def init(self) -> None:
        pass

    def commit(self, records: Sequence[Any], offsets: list[TopicPartition],
               rewind_to: list[TopicPartition], consumer: FakeConsumer) -> bool:
        n = self.b.commits
        self.b.commits += 1
        assert rewind_to == [] or n == 0  # the pipelined sink leaves rewinding to the loop
        if records:
            self.threads.add(threading.current_thread().name)
        if n <= self.hold and records and self.scorer is not None:
            self.overlapped.append(self.scorer.wait_for(n + 1))
        if n == self.fatal_at:
            raise FatalError("producer fenced")
        if n in self.abort:
            return False
        self.b.outputs.extend((topic, key, value) for topic, key, value, _h in records)
        for tp in offsets:
            self.b.committed[tp.partition] = (tp.offset, tp.metadata or "")
        return True

    def close(self) -> None:
        pass


class LazySeekConsumer(FakeConsumer):
    """librdkafka's seek is asynchronous: until the partition's fetcher has served it,
    `position()` still says where it was and `consume()` returns nothing of that
    partition (stale records are dropped). Here that takes two `consume()` calls."""

    def __init__(self, broker: Broker) -> None:
        super().__init__(broker)
        self.pending: dict[int, tuple[int, int]] = {}  # partition -> (offset, calls left)
        self.seeks: list[tuple[int, int]] = []

    def seek(self, tp: TopicPartition) -> None:
        self.pending[tp.partition] = (tp.offset, 2)
        self.seeks.append((tp.partition, tp.offset))

    def consume(self, num_messages: int, timeout: float) -> list[Msg]:
        for p, (offset, left) in list(self.pending.items()):
            if left <= 1:
                self.pos[p] = offset
                del self.pending[p]
            else:
                self.pending[p] = (offset, left - 1)
        out: list[Msg] = []
        for p in sorted(self.pos):
            if p in self.paused or p in self.pending:
                continue
            take = self.b.logs[p][self.pos[p]:self.pos[p] + num_messages - len(out)]
            out.extend(take)
            self.pos[p] += len(take)
        return out


def run(broker: Broker, monkeypatch: pytest.MonkeyPatch, committer: PipelineCommitter,
        scorer: CountingScorer, consumer: FakeConsumer | None = None,
        replay: Callable[[Replay], None] | None = None, **kw: Any) -> ReplaySummary:
    consumer = consumer or FakeConsumer(broker)
    monkeypatch.setattr(replay_mod, "Consumer", lambda conf: consumer)
    monkeypatch.setattr(replay_mod, "BatchCommitter", lambda *a, **k: committer)
    monkeypatch.setattr(replay_mod, "ensure_output_topics", lambda *a: [])
    options = ReplayOptions("r1", TOPIC, "out", **{"from_spec": "earliest", "batch_records": 7,
                                                   **kw})
    r = Replay(Settings(), options, scorer, clock=FakeClock())
    if replay is not None:
        replay(r)
    return r.run()


def assert_exactly_once(broker: Broker, n: int = 60) -> None:
    keys = answered_keys(broker)
    assert len(keys) == len(set(keys)) == n
    for p in range(3):
        offset, meta = broker.committed[p]
        assert offset == 20 and orjson.loads(meta)["e"] == 20 and orjson.loads(meta)["s"] == 0


def test_batch_n_plus_1_is_scored_while_n_commits_on_the_committer_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    broker = make_broker(20)
    scorer = CountingScorer()
    committer = PipelineCommitter(broker, scorer, hold=5)
    summary = run(broker, monkeypatch, committer, scorer)
    assert_exactly_once(broker)
    assert summary.complete and summary.records == 60 and summary.aborted == 0
    # each held commit saw the next batch scored while it was open (one partition ends
    # inside these five batches: its end does not stall the pipeline)
    assert committer.overlapped == [True] * 5
    assert committer.threads == {"rung-replay-commit_0"}


def test_an_abort_mid_replay_discards_the_next_batch_rewinds_and_answers_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    broker = make_broker(20, bad_every=9)
    scorer = CountingScorer()
    committer = PipelineCommitter(broker, scorer, hold=3, abort=[3])
    consumer = LazySeekConsumer(broker)
    summary = run(broker, monkeypatch, committer, scorer, consumer)
    assert_exactly_once(broker)
    assert summary.aborted == 1 and summary.complete
    assert summary.records == 60 and summary.scores + summary.dead_letters == 60
    assert summary.dead_letters == 6
    # the aborted batch and the one scored behind it were rewound (and scored again)
    assert consumer.seeks and sum(scorer.batches) > 60 - summary.dead_letters


@pytest.mark.parametrize("abort_last", [1, 2])
def test_an_abort_of_a_partitions_last_batch_keeps_it_open_until_it_comes_again(
        monkeypatch: pytest.MonkeyPatch, abort_last: int) -> None:
    """The rewound partition's position is still at its end until the seek applies;
    it must not be taken as done (its last records would be lost)."""
    probe = make_broker(20)
    run(probe, monkeypatch, PipelineCommitter(probe), CountingScorer())
    last_data_commit = probe.commits - 2  # the very last one commits the end offsets
    broker = make_broker(20)
    committer = PipelineCommitter(broker, abort=[last_data_commit - abort_last + 1])
    summary = run(broker, monkeypatch, committer, CountingScorer(), LazySeekConsumer(broker))
    assert_exactly_once(broker)
    assert summary.aborted == 1 and summary.complete and summary.by_partition == {
        0: 20, 1: 20, 2: 20}


def test_a_fatal_commit_stops_the_replay_and_a_restart_finishes_exactly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    broker = make_broker(20)
    with pytest.raises(FatalError, match="fenced"):
        run(broker, monkeypatch, PipelineCommitter(broker, fatal_at=4), CountingScorer())
    before = dict(broker.committed)
    assert 0 < len(broker.outputs) < 60
    summary = run(broker, monkeypatch, PipelineCommitter(broker), CountingScorer(),
                  from_spec=None)
    assert summary.resumed and summary.complete
    assert summary.records == 60 - sum(before[p][0] for p in range(3))
    assert_exactly_once(broker)


def test_stop_waits_for_the_commit_in_flight_and_the_rest_resumes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    broker = make_broker(20)
    holder: list[Replay] = []
    scorer = CountingScorer(on_batch=lambda n: holder[0].stop() if n == 3 else None)
    committer = PipelineCommitter(broker, scorer, hold=2)
    summary = run(broker, monkeypatch, committer, scorer, replay=holder.append)
    assert not summary.complete
    # stopped while scoring batch 3 (batch 2 committing): the batch in hand is finished,
    # its commit waited for, and nothing after it is read
    assert committer.overlapped == [True, True] and scorer.batches == [7, 7, 7]
    assert summary.batches == 3 and summary.records == 21 == len(broker.outputs)
    assert sum(off for off, _m in broker.committed.values()) == 21
    rest = run(broker, monkeypatch, PipelineCommitter(broker), CountingScorer(), from_spec=None)
    assert rest.resumed and rest.complete and rest.records == 39
    assert_exactly_once(broker)


# ---- CommitPipeline --------------------------------------------------------------
class _Prepared:
    def __init__(self, records: Sequence[SourceRecord]) -> None:
        self.records = records


class _Outcome:
    def __init__(self, committed: bool) -> None:
        self.committed = committed


def _rec(partition: int, offset: int) -> SourceRecord:
    return SourceRecord(TOPIC, partition, offset, None, b"")


def test_the_pipeline_holds_one_commit_and_reports_its_result_once() -> None:
    gate = threading.Event()

    def commit(p: _Prepared) -> _Outcome:
        assert gate.wait(WAIT_S)
        return _Outcome(committed=len(p.records) == 1)

    pipe: CommitPipeline[_Prepared, _Outcome] = CommitPipeline(commit)
    first = _Prepared([_rec(0, 1)])
    pipe.submit(first)
    with pytest.raises(RuntimeError, match="settle it first"):
        pipe.submit(_Prepared([]))
    assert pipe.settle(block=False) is None and pipe.in_flight
    with pytest.raises(TimeoutError):
        pipe.settle(block=True, timeout_s=0.01)
    assert pipe.in_flight  # a timed-out wait leaves it in flight
    gate.set()
    settled = pipe.settle(block=True, timeout_s=WAIT_S)
    assert settled is not None and settled.committed and settled.prepared is first
    assert pipe.settle(block=True) is None and not pipe.in_flight
    pipe.submit(_Prepared([_rec(0, 2), _rec(0, 3)]))
    done = pipe.settle(block=True, timeout_s=WAIT_S)
    assert done is not None and not done.committed
    assert pipe.close(WAIT_S) is None
    with pytest.raises(RuntimeError, match="closed"):
        pipe.submit(first)


def test_an_error_on_the_committer_thread_is_raised_on_the_loop_thread_once() -> None:
    def commit(_p: _Prepared) -> _Outcome:
        raise FatalError("fenced")

    pipe: CommitPipeline[_Prepared, _Outcome] = CommitPipeline(commit)
    pipe.submit(_Prepared([]))
    with pytest.raises(FatalError, match="fenced"):
        pipe.settle(block=True, timeout_s=WAIT_S)
    assert not pipe.in_flight and pipe.settle(block=True) is None
    pipe.submit(_Prepared([]))
    assert pipe.close(WAIT_S) is None  # logged, not raised, when closing


def test_close_waits_for_the_commit_in_flight() -> None:
    gate, entered = threading.Event(), threading.Event()

    def commit(_p: _Prepared) -> _Outcome:
        entered.set()
        assert gate.wait(WAIT_S)
        return _Outcome(committed=True)

    pipe: CommitPipeline[_Prepared, _Outcome] = CommitPipeline(commit)
    pipe.submit(_Prepared([]))
    assert entered.wait(WAIT_S)
    threading.Timer(0.0, gate.set).start()
    settled = pipe.close(WAIT_S)
    assert settled is not None and settled.committed


def test_rewind_offsets_are_the_first_discarded_offset_per_partition() -> None:
    aborted = [_rec(1, 10), _rec(0, 5), _rec(1, 11)]
    scored = [_rec(1, 12), _rec(2, 7), _rec(0, 4)]
    assert [(tp.partition, tp.offset) for tp in rewind_offsets(aborted, scored, [])] == [
        (0, 4), (1, 10), (2, 7)]
    assert rewind_offsets() == []


def test_the_replay_runs_the_one_pipeline_in_two_halves() -> None:
    from stream_app import pipeline

    assert vars(replay_mod)["prepare_batch"] is pipeline.prepare_batch
    assert vars(replay_mod)["commit_batch"] is pipeline.commit_batch


def test_replay_tagging_equals_dataclasses_replace() -> None:
    import dataclasses

    from stream_app.pipeline import _tag_replay
    from topics.schemas import Action, Tier

    scores = [Score("a", 0.3, Action.REVIEW, True, Tier.PRIMARY, "v1", 0.7, ("r1", "r2"), 0.01,
                    1.7e9, policy_version="p3"),
              Score("b", 0.0, Action.ALLOW, False, Tier.DEFAULT, "d", 0.0, (), 0.0, 0.0)]
    assert _tag_replay(scores, "bf-1") == [dataclasses.replace(s, replay_id="bf-1")
                                           for s in scores]
