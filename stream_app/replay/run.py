"""Replay and backfill: re-score a bounded range of a topic, exactly once, off the live group.

A replay never joins the live consumer group. It `assign()`s the source
partitions at explicit offsets (timestamps resolved with `offsets_for_times`),
under its own group `rung-replay-<id>`, and snapshots every partition's end
offset when it starts, so it is bounded while producers keep writing.

One consumed batch goes through `stream_app.pipeline.prepare_batch` and
`commit_batch`, the same steps as the live worker, and is one Kafka transaction
(`BatchCommitter` through `KafkaSink`): every score (tagged with the replay id)
and every dead letter of the batch, and the replay group's offsets, whose
metadata carries the snapshotted range (`stream_app.replay.state`). A crash,
SIGKILL included, loses nothing and duplicates nothing: the open transaction is
aborted (the restarted producer, same `transactional.id`, fences it) and the
restart resumes from the committed offsets over the same stored range.

Pipelined commits (`stream_app.kafka.pipelined.CommitPipeline`), as in the live
worker: batch N commits on one committer thread while the loop consumes and
scores N+1; N+1 is handed over only once N's commit returned, so at most one
transaction is open and batches commit in offset order. Positions and the
summary move only when a commit has held. If N aborts, N+1 (already scored) is
dropped and every partition is sought back, on the loop thread, to the first
offset of N or N+1 there; a rewound partition is not taken as finished until
one of its records came again (librdkafka's seek is asynchronous, so its
position may still say "end"). A partition read to its end is finished only
once the commit that may hold its last records has held. `stop()` finishes the
batch in hand and waits for its commit. The resume metadata is the same string
on every commit, so it stays exact whatever batch was last to hold.

Output: scores to the chosen topic; undecodable records to the replay's own
dead-letter topic (default `<output-topic>.dead-letter`), so the live
dead-letter topic never holds a record twice. No review copies: a backfill
must not page the review team again. Every record of the range ends as exactly
one score or one dead letter.

Errors: `ReplayError` means the replay cannot start as asked (no stored range
and no `--from`, a replay id that would be the live group); everything that
stops a running replay (Kafka errors, a scorer breaking its contract, no
progress) is `stream_app.kafka.errors.FatalError`. The committed state stays
valid either way.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import structlog
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from scorers.clock import Clock, SystemClock
from stream_app.config import Settings
from stream_app.kafka.admin import create_topics
from stream_app.kafka.clients import replay_consumer_config, replay_producer_config
from stream_app.kafka.commit import BatchCommitter, KafkaSink
from stream_app.kafka.errors import (
    FatalError,
    Policy,
    classify_consumer_error,
    classify_coordinator_error,
    retry_within,
)
from stream_app.kafka.pipelined import CommitPipeline, rewind_offsets
from stream_app.kafka.records import SourceRecord, from_message, next_offsets
from stream_app.pipeline import (
    BatchContext,
    BatchOutcome,
    BatchScorer,
    PreparedBatch,
    Routing,
    commit_batch,
    prepare_batch,
)
from stream_app.replay.range import PartitionRange, parse_bound, partition_range
from stream_app.replay.scoring import effective_deadline_s
from stream_app.replay.state import (
    Committed,
    ReplayPlan,
    ReplayStateError,
    Resume,
    check_replay_id,
    load_resume,
    replay_group_id,
    replay_transactional_id,
)
from topics.catalog import TopicSpec

log = structlog.get_logger(__name__)

_RETAIN_7D = str(7 * 24 * 3600 * 1000)
_RETAIN_30D = str(30 * 24 * 3600 * 1000)


class ReplayError(RuntimeError):
    """The replay cannot start as asked (user-level: range, replay id); the committed
    state stays valid. Runtime failures raise `FatalError`."""


class ProgressSink(Protocol):
    def start(self, plan: ReplayPlan, positions: dict[int, int]) -> None: ...
    def advance(self, partition: int, done: int) -> None: ...


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    replay_id: str
    source_topic: str
    output_topic: str
    dead_letter_topic: str | None = None  # None: "<output_topic>.dead-letter"
    from_spec: str | None = None  # required for a new replay; a restart may leave it out
    to_spec: str | None = None  # None: "now" for a new replay, the stored bound on restart
    batch_records: int = 5000
    deadline_s: float | None = 5.0  # None or <= 0: no per-batch deadline
    poll_timeout_s: float = 0.5
    stall_timeout_s: float = 120.0  # no progress for this long: stop with an error

    def __post_init__(self) -> None:
        check_replay_id(self.replay_id)
        if self.batch_records < 1:
            raise ValueError("batch_records must be >= 1")
        if self.output_topic == self.source_topic:
            raise ValueError("the output topic must not be the source topic")

    @property
    def dead_letters(self) -> str:
        return self.dead_letter_topic or f"{self.output_topic}.dead-letter"


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    replay_id: str
    planned: int  # offsets in the whole stored range
    records: int  # records consumed and committed by this run
    scores: int
    dead_letters: int
    by_tier: dict[str, int] = field(default_factory=dict)
    by_action: dict[str, int] = field(default_factory=dict)
    by_partition: dict[int, int] = field(default_factory=dict)
    batches: int = 0
    aborted: int = 0
    elapsed_s: float = 0.0  # the whole run, planning and transactional set-up included
    loop_s: float = 0.0  # from the first fetch to the last commit
    resumed: bool = False
    complete: bool = False
    # seconds spent, summed over the run: the loop thread in consume (`consume`), decode
    # + score + route (`prepare`, of which `decode` and `score`) and waiting for the commit
    # in flight (`wait_commit`); the committer thread committing (`commit`). A loop that
    # hardly waits is bound by its own consume + prepare, one that waits by the broker.
    stage_s: dict[str, float] = field(default_factory=dict)

    @property
    def records_per_s(self) -> float:
        return self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0


# ---- planning ------------------------------------------------------------------
def source_partitions(consumer: Consumer, topic: str, timeout_s: float = 10.0) -> list[int]:
    md = consumer.list_topics(topic, timeout=timeout_s)
    meta = md.topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise ReplayError(f"source topic {topic!r} does not exist")
    return sorted(meta.partitions)


def resolve_plan(consumer: Consumer, replay_id: str, topic: str, from_spec: str, to_spec: str,
                 now_ms: int, timeout_s: float = 10.0) -> ReplayPlan:
    """Snapshot the range: watermarks now, timestamps through offsets_for_times."""
    start, end = parse_bound(from_spec, now_ms), parse_bound(to_spec, now_ms)
    parts = source_partitions(consumer, topic, timeout_s)
    marks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s,
                                               cached=False) for p in parts}
    times: dict[Any, dict[int, int]] = {}
    for bound in {start, end}:
        if bound.kind == "timestamp":
            found = consumer.offsets_for_times(
                [TopicPartition(topic, p, bound.value) for p in parts], timeout=timeout_s)
            times[bound] = {tp.partition: tp.offset for tp in found}
    ranges = tuple(partition_range(p, start, end, marks[p][0], marks[p][1],
                                   times.get(start, {}).get(p), times.get(end, {}).get(p))
                   for p in parts)
    return ReplayPlan(replay_id, topic, from_spec, to_spec, ranges)


def load_or_resolve(consumer: Consumer, options: ReplayOptions,
                    now_ms: int | None = None) -> tuple[Resume, bool]:
    """The stored plan (and True) or a freshly resolved one (and False); commits nothing."""
    topic = options.source_topic
    parts = source_partitions(consumer, topic)
    committed = _committed(consumer, [TopicPartition(topic, p) for p in parts])
    rows = [Committed(tp.partition, tp.offset, tp.metadata) for tp in committed]
    resume = load_resume(options.replay_id, topic, rows, options.from_spec, options.to_spec)
    if resume is not None:
        return resume, True
    if options.from_spec is None:
        raise ReplayError(f"replay {options.replay_id} has no stored range: --from is required")
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    plan = resolve_plan(consumer, options.replay_id, topic, options.from_spec,
                        options.to_spec or "now", now)
    return Resume(plan, {r.partition: r.start for r in plan.ranges}), False


def dry_run(settings: Settings, options: ReplayOptions) -> tuple[Resume, bool]:
    """What a run would replay (the stored range on a restart); touches no state.

    It reads the committed offsets without waiting for them to be stable: a killed
    run's open transaction would otherwise block the read until it times out, and a
    dry run must not fence (abort) a replay that may still be running."""
    conf = replay_consumer_config(settings, replay_group_id(options.replay_id))
    conf["isolation.level"] = "read_uncommitted"
    consumer = Consumer(conf)
    try:
        return load_or_resolve(consumer, options)
    finally:
        consumer.close()


def ensure_output_topics(client_conf: dict[str, Any], options: ReplayOptions,
                         partitions: int) -> list[str]:
    return create_topics(client_conf, [
        TopicSpec(options.output_topic, partitions,
                  {"retention.ms": _RETAIN_7D, "compression.type": "lz4"}),
        TopicSpec(options.dead_letters, 1, {"retention.ms": _RETAIN_30D}),
    ])


# ---- the run -------------------------------------------------------------------
@dataclass(slots=True)
class _LoopState:
    """One run of the batch loop: what it reads, where it stands, the commit in flight."""

    plan: ReplayPlan
    consumer: Consumer
    ends: dict[int, int]
    positions: dict[int, int]  # per partition: the next offset of the committed range
    active: set[int]  # partitions not yet consumed to their end (and committed)
    pipe: CommitPipeline[PreparedBatch, BatchOutcome]
    draining: set[int] = field(default_factory=set)  # read to the end, last commit pending
    unconfirmed: set[int] = field(default_factory=set)  # rewound, not seen again yet


class Replay:
    """One replay run: plan (or resume), then batches until the range is done."""

    def __init__(self, settings: Settings, options: ReplayOptions, scorer: BatchScorer, *,
                 clock: Clock | None = None, progress: ProgressSink | None = None) -> None:
        if replay_group_id(options.replay_id) == settings.kafka.group_id:
            raise ReplayError("the replay group would be the live group; choose another replay id")
        self.settings = settings
        self.options = options
        self.scorer = scorer
        self.clock = clock or SystemClock()
        self.progress = progress
        self.deadline_s = effective_deadline_s(options.deadline_s)
        self._stop = threading.Event()
        self._tiers: Counter[str] = Counter()
        self._actions: Counter[str] = Counter()
        self._parts: Counter[int] = Counter()
        self._counts = Counter[str]()
        self._stage_s = dict.fromkeys(("consume", "prepare", "decode", "score", "wait_commit",
                                       "commit"), 0.0)

    def stop(self) -> None:
        """Finish the batch in hand and return; the committed state allows a resume."""
        self._stop.set()

    def run(self) -> ReplaySummary:
        t0 = self.clock.monotonic()
        consumer = Consumer(replay_consumer_config(self.settings, replay_group_id(self.options.replay_id)))
        committer: BatchCommitter | None = None
        try:
            # Fence a killed run's producer first: its open transaction is aborted, so the
            # committed offsets read next are stable instead of pending until it times out.
            committer = BatchCommitter(
                replay_producer_config(self.settings, replay_transactional_id(self.options.replay_id)), exactly_once=True,
                timeout_s=self.settings.kafka.transaction_timeout_s)
            committer.init()
            resume, resumed = load_or_resolve(consumer, self.options)
            ensure_output_topics(self.settings.kafka.client_config(), self.options,
                                 len(source_partitions(consumer, self.options.source_topic)))
            if not resumed:
                self._commit_plan(resume, committer, consumer)
            log.info("replay_started", replay_id=self.options.replay_id, resumed=resumed,
                     planned=resume.plan.total, remaining=resume.remaining)
            t_loop = self.clock.monotonic()
            positions = self._loop(resume, committer, consumer)
            loop_s = self.clock.monotonic() - t_loop
            complete = self._finish(resume.plan, positions, committer, consumer)
        except KafkaException as exc:
            raise FatalError(f"kafka error: {exc}") from exc
        finally:
            if committer is not None:
                committer.close()
            consumer.close()
        return ReplaySummary(
            self.options.replay_id, resume.plan.total, self._counts["records"],
            self._counts["scores"], self._counts["dead"], dict(self._tiers), dict(self._actions),
            dict(self._parts), self._counts["batches"], self._counts["aborted"],
            self.clock.monotonic() - t0, loop_s, resumed, complete,
            {k: round(v, 3) for k, v in self._stage_s.items()})

    def _commit_plan(self, resume: Resume, committer: BatchCommitter, consumer: Consumer) -> None:
        plan = resume.plan
        offsets = [TopicPartition(plan.topic, r.partition, r.start, plan.metadata(r.partition))
                   for r in plan.ranges]
        if not committer.commit([], offsets, [], consumer):
            raise FatalError("could not record the replay's range (transaction aborted)")

    def _loop(self, resume: Resume, committer: BatchCommitter,
              consumer: Consumer) -> dict[int, int]:
        plan = resume.plan
        ends = {r.partition: r.end for r in plan.ranges}
        positions = dict(resume.positions)
        active = {p for p in ends if positions[p] < ends[p]}
        if self.progress is not None:
            self.progress.start(plan, positions)
        if not active:
            return positions
        consumer.assign([TopicPartition(plan.topic, p, positions[p]) for p in sorted(active)])
        # rewind=False: an abort is rewound on this thread (`_rewind`), never on the
        # committer thread while this one consumes. The committer thread does take the
        # consumer's group metadata (a thread-safe librdkafka call; an assigned consumer's
        # never changes), where the live worker pins it here (it may be rebalanced).
        ctx = BatchContext(
            scorer=self.scorer, sink=KafkaSink(committer, consumer, plan.metadata, rewind=False),
            routing=Routing(self.options.output_topic, self.options.dead_letters,
                            review_topic=None, replay_id=self.options.replay_id),
            clock=self.clock, budget_s=self.deadline_s)
        run = _LoopState(plan, consumer, ends, positions, active,
                         CommitPipeline(lambda prepared: self._commit(prepared, ctx),
                                        thread_name="rung-replay-commit"))
        try:
            self._pipelined(run, ctx)
            self._settle(run, block=True)  # stopped or done: the last commit decides
        finally:
            run.pipe.close(self.settings.kafka.transaction_timeout_s + 5.0)
        for p in ends.keys() - active:
            positions[p] = max(positions[p], ends[p])
        return positions

    def _pipelined(self, run: _LoopState, ctx: BatchContext) -> None:
        """Consume and prepare batch N+1 while N commits (`stream_app.kafka.pipelined`).

        A partition consumed to its end is final (paused, left out) once the commit in
        flight, which may hold its last records, has held ("draining" until then: no
        longer read, not yet final). The loop blocks on that commit only when nothing is
        left to read."""
        consumer, ends, active, pipe = run.consumer, run.ends, run.active, run.pipe
        last_progress = self.clock.monotonic()
        while active and not self._stop.is_set():
            reading = active - run.draining
            if self._settle(run, block=not reading) == "committed":
                last_progress = self.clock.monotonic()
            if not reading:
                continue
            t0 = self.clock.monotonic()
            msgs = consumer.consume(num_messages=self.options.batch_records,
                                    timeout=self.options.poll_timeout_s)
            received_s = self.clock.monotonic()
            self._stage_s["consume"] += received_s - t0
            batch = [r for r in map(from_message, filter(_usable, msgs))
                     if r.partition in reading and r.offset < ends[r.partition]]
            if batch:
                run.unconfirmed.difference_update(r.partition for r in batch)
                prepared = prepare_batch(batch, received_s, ctx)
                stage = self._stage_s
                stage["prepare"] += self.clock.monotonic() - received_s
                stage["decode"] += prepared.decode_s
                stage["score"] += prepared.score_s
                settled = self._settle(run, block=True, scored=batch)
                if settled == "aborted":
                    continue  # the aborted batch and this one come again
                if settled == "committed":
                    last_progress = self.clock.monotonic()
                pipe.submit(prepared)
            done = _reached_end(consumer, run.plan.topic, active - run.draining,
                                ends) - run.unconfirmed
            if done:
                if pipe.in_flight:
                    run.draining |= done
                else:
                    self._finalize(run, done)
                last_progress = self.clock.monotonic()
            if self.clock.monotonic() - last_progress > self.options.stall_timeout_s:
                raise FatalError(f"no progress for {self.options.stall_timeout_s}s on partitions "
                                  f"{sorted(active)} (an open transaction in the source?)")

    def _commit(self, prepared: PreparedBatch, ctx: BatchContext) -> BatchOutcome:
        """On the committer thread (the only writer of `stage_s["commit"]`)."""
        t0 = self.clock.monotonic()
        try:
            return commit_batch(prepared, ctx)
        finally:
            self._stage_s["commit"] += self.clock.monotonic() - t0

    def _finalize(self, run: _LoopState, done: set[int]) -> None:
        """Partitions consumed to their end, all committed: paused, out of the loop."""
        if not done:
            return
        run.consumer.pause([TopicPartition(run.plan.topic, p) for p in sorted(done)])
        run.active -= done
        run.draining -= done
        for p in done:
            if self.progress is not None:
                self.progress.advance(p, run.plan.range_of(p).size)

    def _settle(self, run: _LoopState, *, block: bool,
                scored: Sequence[SourceRecord] = ()) -> Literal["committed", "aborted"] | None:
        """Take the commit in flight once it is done (or wait for it); None if there is
        none (or it is not done). Committed: account it, move the positions on, finalize
        the draining partitions. Aborted: seek every partition back to the first offset
        of the aborted batch or of `scored` (the next batch, which the caller drops)."""
        timeout_s = self.settings.kafka.transaction_timeout_s + 30.0 if block else None
        t0 = self.clock.monotonic()
        settled = run.pipe.settle(block=block, timeout_s=timeout_s)
        self._stage_s["wait_commit"] += self.clock.monotonic() - t0
        if settled is None:
            return None
        if not settled.committed:
            self._counts["aborted"] += 1
            self._rewind(run, settled.records, scored)
            return "aborted"
        outcome, batch = settled.outcome, settled.records
        self._counts.update(records=outcome.records, scores=len(outcome.scores),
                            dead=outcome.dead_letters, batches=1)
        self._tiers.update(s.tier for s in outcome.scores)
        self._actions.update(s.action.value for s in outcome.scores)
        self._parts.update(r.partition for r in batch)
        for tp in next_offsets(batch):
            run.positions[tp.partition] = tp.offset
            if self.progress is not None:
                self.progress.advance(tp.partition,
                                      tp.offset - run.plan.range_of(tp.partition).start)
        self._finalize(run, set(run.draining))
        return "committed"

    def _rewind(self, run: _LoopState, aborted: Sequence[SourceRecord],
                scored: Sequence[SourceRecord]) -> None:
        """Seek back on this thread; a draining partition that is rewound reads again, the
        others were committed before the aborted batch and are final. `seek` is
        asynchronous in librdkafka: a rewound partition's position is not trusted for
        "done" until one of its records came again (one will: the aborted records are
        inside the range)."""
        rewound = rewind_offsets(aborted, scored)
        for tp in rewound:
            run.consumer.seek(tp)  # still assigned: a replay never gives partitions up
            run.unconfirmed.add(tp.partition)
        again = run.draining & {tp.partition for tp in rewound}
        self._finalize(run, run.draining - again)
        run.draining -= again
        log.info("replay_batch_rewound", aborted=len(aborted), scored=len(scored),
                 partitions=len(rewound))

    def _finish(self, plan: ReplayPlan, positions: dict[int, int], committer: BatchCommitter,
                consumer: Consumer) -> bool:
        """Commit the end offset of every finished partition (control markers or trimmed
        records can leave the last commit short of it): a restart then sees it done."""
        finished = [r for r in plan.ranges if positions[r.partition] >= r.end]
        offsets = [TopicPartition(plan.topic, r.partition, r.end, plan.metadata(r.partition))
                   for r in finished]
        if offsets and not self._stop.is_set() and not committer.commit([], offsets, [], consumer):
            raise FatalError("could not commit the final offsets (transaction aborted)")
        return len(finished) == len(plan.ranges)


def _committed(consumer: Consumer, partitions: list[TopicPartition],
               timeout_s: float = 30.0) -> list[TopicPartition]:
    """The group's committed offsets, retried while the group coordinator moves or loads."""
    return retry_within(lambda: list(consumer.committed(partitions, timeout=10.0)), timeout_s,
                        classify_coordinator_error, what="reading the replay's committed offsets")


def _usable(msg: Message) -> bool:
    err = msg.error()
    if err is None:
        return True
    if classify_consumer_error(err) is Policy.FATAL:
        raise FatalError(f"consumer error: {err}")
    log.warning("replay_consumer_error", error=str(err))
    return False


def _reached_end(consumer: Consumer, topic: str, active: set[int],
                 ends: dict[int, int]) -> set[int]:
    positions = consumer.position([TopicPartition(topic, p) for p in sorted(active)])
    return {tp.partition for tp in positions if tp.offset >= ends[tp.partition]}


__all__ = ["PartitionRange", "Replay", "ReplayError", "ReplayOptions", "ReplayStateError",
           "ReplaySummary", "dry_run", "load_or_resolve", "resolve_plan"]
