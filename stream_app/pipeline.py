"""One micro-batch, the same steps in every runtime: `process_batch`.

    prepare_batch: decode → deadline → shed late records → score → check counts → route
    commit_batch:  commit (sink) → account

`process_batch` is the two in a row (the replay, the faust runtime). The live
worker calls them apart: `prepare_batch` on its loop thread, `commit_batch` on its
committer thread, so batch N commits while batch N+1 is collected and scored
(`stream_app.live.worker`, "Pipelined commits").

The live worker (`stream_app.live.worker`), the replay (`stream_app.replay.run`)
and the faust runtime (`stream_app.faust_runtime`) differ only in what they
hand in: the consumed records (`SourceRecord`, adapted from a confluent-kafka
`Message` or a faust event), the moment the first of them was received, the
routing (data, not code) and the sink that makes the outputs durable and the
offsets committed:

- live worker: `BatchCommitter`, one Kafka transaction per batch (or produce,
  flush, commit offsets at-least-once);
- replay: `BatchCommitter` on the replay's transactional producer, offsets
  carrying the stored range as metadata; routing with no review topic and a
  replay-id tag on every score;
- faust: its asyncio producer, at-least-once (produce everything, await every
  ack; the runtime then releases the offsets).

The deadline
------------
A batch's deadline is an absolute instant on the monotonic clock: the moment
rung received the batch's FIRST record plus the configured budget
(`batch.deadline_s` for the live worker and the faust runtime; the replay's
`--deadline-s`, where "none" means a large bound, `DISABLED_DEADLINE_S`).
Decoding and scoring happen within it: the ladder gets the `Deadline` and each
tier takes only what is left, degrading rather than overrunning. Producing and
committing happen after it and are bounded by the Kafka client's own timeouts
(`kafka.transaction_timeout_s`). "Received" is when the runtime got the record
from its client: the worker's `consume()`/`poll()` return (kept across a
rebalance), the replay's `consume()` return, and for faust the moment
`take_events` hands over the batch (faust does not expose earlier per-record
receipt times).

Late records (event time)
-------------------------
With `ctx.event_budget_s` set (the live worker's `batch.event_budget_s`; the replay
and the faust runtime pass None: throughput mode), a record's end-to-end budget
counts from its Kafka timestamp (`SourceRecord.timestamp_s`, the producer's
CreateTime; wall-clock epoch seconds, so producers and workers need synchronised
clocks, which is why the budget should be generous). Just before scoring,
`shed_reasons` marks each record whose timestamp + budget has passed: `late` if it
was already past it when the batch's first record was received (it waited upstream
or in the Kafka backlog), `overload` if it ran past it inside rung. The ladder
answers those with its cheap tiers only (fallback, else rules, else the safe
default; `scorers.ladder`, "Shedding"), so a backlog drains instead of growing. A
record without a timestamp is never shed. The receipt-based deadline above stays
the batch's deadline for the records that are not shed.

Exactly one answer per record: every record leaves as one score or one dead
letter, checked here (`scores + dead letters == records`); a scorer that raises
or answers a different number of records is fatal (`FatalError`), and so the
batch is never committed. An aborted commit (the sink returns None) accounts
nothing: the records come again. The outcome carries the decoded batch, so a
runtime can apply it to the feature store once it is committed (the live worker
does, `stream_app.features`); nothing here writes features.

Tracing (`ctx.tracer`, off by default): `prepare_batch` opens the batch's trace and
gets each output's trace-context headers from it; `commit_batch` ends it with the
commit (`stream_app.tracing`, docs/tracing.md). With no tracer nothing of it runs.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from scorers.clock import Clock
from scorers.deadline import Deadline
from scorers.listeners import LadderListener
from stream_app.accounting import BatchMetrics, report_batch
from stream_app.kafka.errors import FatalError
from stream_app.kafka.records import (
    DecodedBatch,
    Headers,
    OutRecord,
    SourceRecord,
    decode_batch,
    output_records,
)
from stream_app.kafka.serde import RecordFormat
from topics.schemas import Score, Transaction


class BatchScorer(Protocol):
    def score_batch(self, txs: Sequence[Transaction], deadline: Deadline,
                    shed: Sequence[str] | None = None) -> list[Score]:
        """`shed` is passed only when some record is shed (see the module docstring)."""
        ...


class WorkerMetrics(BatchMetrics, Protocol):
    """What a runtime reports; `stream_app.metrics.Metrics` implements it."""

    @property
    def ladder_listener(self) -> LadderListener: ...
    def transaction_aborted(self, reason: str) -> None: ...
    def set_assigned_partitions(self, n: int) -> None: ...
    def set_fatal(self, reason: str | None) -> None: ...
    def update_from_librdkafka_stats(self, stats_json: str) -> None: ...
    def set_consumer_lag(self, topic: str, partition: int, lag: int) -> None: ...
    def drop_consumer_lag(self, partitions: Any = None) -> None: ...


class BatchSink(Protocol):
    """Makes one batch's outputs durable and its source offsets committed."""

    def commit(self, records: Sequence[OutRecord],
               batch: Sequence[SourceRecord]) -> Mapping[str, float] | None:
        """Produce `records` and commit `batch`'s offsets; return the stage durations it
        measured (e.g. `produce`, `commit`), or None if the batch was aborted and rewound.
        Raises `FatalError` when neither is possible."""
        ...


class TracedBatch(Protocol):
    """One batch's trace (`stream_app.tracing.BatchTrace`)."""

    def scored(self, decoded: DecodedBatch, scores: Sequence[Score], shed: Sequence[str] | None,
               ) -> tuple[Sequence[Headers | None] | None, Sequence[Headers | None] | None]:
        """Extra headers per score and per dead letter (the trace context)."""
        ...

    def commit(self, sink: BatchSink, prepared: PreparedBatch) -> Mapping[str, float] | None:
        """`sink.commit` inside the batch's span, which it ends."""
        ...


class BatchTracing(Protocol):
    """Where batch traces come from (`stream_app.tracing.BatchTracer`)."""

    def batch(self, records: Sequence[SourceRecord], first_received_s: float,
              clock: Clock) -> AbstractContextManager[TracedBatch]: ...


@dataclass(frozen=True, slots=True)
class Routing:
    """Where a batch's outputs go."""

    scores_topic: str
    dead_letter_topic: str
    review_topic: str | None  # None: no review copies (replay)
    replay_id: str | None = None  # set: every score is tagged with it (and its header)


@dataclass(frozen=True, slots=True)
class BatchContext:
    """Everything `process_batch` needs besides the records; built once per runtime."""

    scorer: BatchScorer
    routing: Routing
    sink: BatchSink
    clock: Clock
    budget_s: float  # the deadline budget from the first record's receipt
    metrics: BatchMetrics | None = None
    event_budget_s: float | None = None  # from each record's Kafka timestamp; None: no shedding
    tracer: BatchTracing | None = None  # OpenTelemetry spans and header context (stream_app.tracing)
    record_format: RecordFormat | None = None  # transactions/scores values (kafka.serde); None: JSON


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    committed: bool  # False: aborted and rewound, nothing accounted
    records: int
    scores: list[Score]
    dead_letters: int
    reviews: int
    deadline: Deadline
    score_s: float  # time spent in the scorer (the batcher's inference estimate)
    decoded: DecodedBatch | None = None  # the records as decoded (the live feature feed)
    shed: int = 0  # records past their event-time budget, answered by the cheap tiers


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A decoded, scored and routed batch, not yet committed (`prepare_batch`)."""

    records: Sequence[SourceRecord]
    decoded: DecodedBatch
    scores: list[Score]
    out: list[OutRecord]
    reviews: int
    deadline: Deadline
    decode_s: float
    score_s: float
    shed: int
    trace: TracedBatch | None = None  # the batch's spans, ended by commit_batch


def batch_deadline(clock: Clock, first_received_s: float, budget_s: float) -> Deadline:
    """The one meaning of a batch's deadline: first record's receipt + budget."""
    return Deadline(clock, first_received_s + max(0.0, budget_s))


def shed_reasons(timestamps_s: Sequence[float | None], *, now_wall_s: float,
                 received_wall_s: float, budget_s: float) -> list[str] | None:
    """Per record, why it is shed ("" when it is not): `late` if its timestamp + budget
    had passed when the batch was received, `overload` if it has passed by now. None
    when no record is shed."""
    out: list[str] = []
    any_shed = False
    for ts in timestamps_s:
        if ts is None or ts + budget_s > now_wall_s:
            out.append("")
            continue
        any_shed = True
        out.append("late" if ts + budget_s <= received_wall_s else "overload")
    return out if any_shed else None


def prepare_batch(records: Sequence[SourceRecord], first_received_s: float,
                  ctx: BatchContext) -> PreparedBatch:
    """Decode, shed, score and route one batch; nothing is produced or committed.
    With `ctx.tracer`, inside the batch's trace (`stream_app.tracing`)."""
    if ctx.tracer is not None:
        with ctx.tracer.batch(records, first_received_s, ctx.clock) as trace:
            return _prepare(records, first_received_s, ctx, trace)
    return _prepare(records, first_received_s, ctx, None)


def _prepare(records: Sequence[SourceRecord], first_received_s: float, ctx: BatchContext,
             trace: TracedBatch | None) -> PreparedBatch:
    clock = ctx.clock
    deadline = batch_deadline(clock, first_received_s, ctx.budget_s)
    t0 = clock.monotonic()
    decoded = decode_batch(records, ctx.record_format)
    t1 = clock.monotonic()
    shed = None
    if ctx.event_budget_s is not None and decoded.txs:
        now_wall = clock.wall()
        shed = shed_reasons([records[i].timestamp_s for i in decoded.tx_rows],
                            now_wall_s=now_wall, received_wall_s=now_wall - (t1 - first_received_s),
                            budget_s=ctx.event_budget_s)
    scores = _score(ctx.scorer, decoded.txs, deadline, shed)
    t2 = clock.monotonic()
    if len(scores) + len(decoded.dead) != len(records):
        raise FatalError(f"scorer answered {len(scores)} of {len(decoded.txs)} records")
    routing = ctx.routing
    if routing.replay_id is not None:
        rid = routing.replay_id
        scores = _tag_replay(scores, rid)
    trace_headers = (None, None) if trace is None else trace.scored(decoded, scores, shed)
    out, reviews = output_records(scores, decoded.dead, scores_topic=routing.scores_topic,
                                  score_headers=trace_headers[0], dead_headers=trace_headers[1],
                                  review_topic=routing.review_topic,
                                  dead_letter_topic=routing.dead_letter_topic,
                                  fmt=ctx.record_format)
    n_shed = 0 if shed is None else sum(1 for r in shed if r)
    return PreparedBatch(records, decoded, scores, out, reviews, deadline, t1 - t0, t2 - t1,
                         n_shed, trace=trace)


def commit_batch(prepared: PreparedBatch, ctx: BatchContext) -> BatchOutcome:
    """Hand a prepared batch to the sink and account it if it committed."""
    p = prepared
    records = p.records
    stages = ctx.sink.commit(p.out, records) if p.trace is None else p.trace.commit(ctx.sink, p)
    outcome = BatchOutcome(stages is not None, len(records), p.scores, len(p.decoded.dead),
                           p.reviews, p.deadline, p.score_s, p.decoded, p.shed)
    if stages is not None and ctx.metrics is not None and records:
        report_batch(ctx.metrics, records[0].topic, n_records=len(records), txs=p.decoded.txs,
                     scores=p.scores, n_dead=len(p.decoded.dead), n_reviews=p.reviews,
                     now_wall_s=ctx.clock.wall(), stages={"decode": p.decode_s, **stages})
    return outcome


def process_batch(records: Sequence[SourceRecord], first_received_s: float,
                  ctx: BatchContext) -> BatchOutcome:
    """Prepare and commit one batch (see the module docstring)."""
    return commit_batch(prepare_batch(records, first_received_s, ctx), ctx)


def _score(scorer: BatchScorer, txs: list[Transaction], deadline: Deadline,
           shed: list[str] | None = None) -> list[Score]:
    if not txs:
        return []
    try:
        if shed is None:
            return scorer.score_batch(txs, deadline)
        return scorer.score_batch(txs, deadline, shed)
    except Exception as exc:  # the ladder must not raise; if it does, the batch cannot be answered
        raise FatalError(f"scorer raised: {exc!r}") from exc


_SCORE_FIELDS = tuple(f.name for f in dataclasses.fields(Score))
_REPLAY_AT = _SCORE_FIELDS.index("replay_id")
_score_values = operator.attrgetter(*_SCORE_FIELDS)


def _tag_replay(scores: list[Score], replay_id: str) -> list[Score]:
    """`dataclasses.replace(s, replay_id=replay_id)` for every score at about half its
    cost (one per record on the replay's hot path; field order from the dataclass)."""
    at = _REPLAY_AT
    return [Score(*(*v[:at], replay_id, *v[at + 1:])) for v in map(_score_values, scores)]
