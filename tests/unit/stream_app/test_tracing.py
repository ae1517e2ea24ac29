"""Spans and header context through `prepare_batch`/`commit_batch`: the SDK's in-memory
exporter, a fake scorer and sink, a fake clock; no broker."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode

from scorers.clock import FakeClock
from scorers.deadline import Deadline
from stream_app.config import Settings
from stream_app.kafka.errors import FatalError
from stream_app.kafka.records import OutRecord, SourceRecord
from stream_app.pipeline import BatchContext, Routing, commit_batch, prepare_batch, process_batch
from stream_app.tracing import BatchTracer, build_tracer, parse_traceparent
from topics.schemas import Action, Score, Tier, Transaction

TOPIC = "t.transactions"
ROUTING = Routing("t.scores", "t.dead-letter", "t.review")
TRACE_A, SPAN_A = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
TRACE_B, SPAN_B = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
TRACE_C, SPAN_C = 0x11112222333344445555666677778888, 0x1234567812345678


def _tp(trace_id: int, span_id: int, flags: int = 1) -> bytes:
    return b"00-%032x-%016x-%02x" % (trace_id, span_id, flags)


class Scorer:
    def __init__(self, boom: bool = False) -> None:
        self.boom = boom

    def score_batch(self, txs: Sequence[Transaction], deadline: Deadline,
                    shed: Sequence[str] | None = None) -> list[Score]:
        if self.boom:
            raise RuntimeError("CUDA error")
        return [Score(t.transaction_id, 0.9 if (t.amount or 0) > 100 else 0.1,
                      Action.BLOCK if (t.amount or 0) > 100 else Action.ALLOW, False,
                      Tier.PRIMARY if i % 2 == 0 else Tier.FALLBACK, "p-1", 0.9, (), 0.0, 0.0)
                for i, t in enumerate(txs)]


class Sink:
    def __init__(self, abort: bool = False) -> None:
        self.abort = abort
        self.out: list[OutRecord] = []

    def commit(self, records: Sequence[OutRecord],
               batch: Sequence[SourceRecord]) -> Mapping[str, float] | None:
        self.out.extend(records)
        return None if self.abort else {"produce": 0.001, "commit": 0.002}


def _tx(tx_id: str, amount: float) -> bytes:
    return orjson.dumps({"transaction_id": tx_id, "amount": amount, "currency": "EUR"})


def _batch() -> list[SourceRecord]:
    """a: sampled context with tracestate; b: sampled, needs review (block); bad: a sampled
    dead letter; c: unsampled context; d: no headers; e: other headers only."""
    def rec(offset: int, value: bytes | None, headers: Any = None, partition: int = 0
            ) -> SourceRecord:
        return SourceRecord(TOPIC, partition, offset, f"k{offset}".encode(), value, None, headers)
    return [rec(10, _tx("a", 5.0), [("traceparent", _tp(TRACE_A, SPAN_A)),
                                    ("tracestate", b"vendor=x")]),
            rec(11, _tx("b", 500.0), [("traceparent", _tp(TRACE_B, SPAN_B))]),
            rec(12, b"\xff nope", [("traceparent", _tp(TRACE_C, SPAN_C))]),
            rec(13, _tx("c", 7.0), [("traceparent", _tp(TRACE_C, SPAN_A, flags=0))]),
            rec(14, _tx("d", 8.0)),
            rec(3, _tx("e", 9.0), [("x-other", b"1")], partition=1)]


def _tracer(ratio: float = 1.0, max_links: int = 128) -> tuple[BatchTracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return BatchTracer(provider, sample_ratio=ratio, max_links=max_links,
                       group_id="g1"), exporter


def _ctx(tracer: BatchTracer | None, sink: Sink | None = None, scorer: Scorer | None = None,
         clock: FakeClock | None = None) -> BatchContext:
    return BatchContext(scorer=scorer or Scorer(), routing=ROUTING, sink=sink or Sink(),
                        clock=clock or FakeClock(), budget_s=0.25, tracer=tracer)


def _headers(out: list[OutRecord], topic: str, key: bytes) -> dict[str, bytes]:
    (h,) = [dict(r[3]) for r in out if r[0] == topic and r[1] == key]
    return h


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _spans(exporter: InMemorySpanExporter) -> tuple[ReadableSpan, dict[str, ReadableSpan]]:
    spans = exporter.get_finished_spans()
    (batch,) = [s for s in spans if s.name == f"process {TOPIC}"]
    records = {(f"score:{_attrs(s)['rung.transaction_id']}" if "rung.transaction_id"
                in _attrs(s) else f"dead_letter:{_attrs(s)['messaging.kafka.offset']}"): s
               for s in spans if s.name == f"score {TOPIC}"}
    assert len(records) + 1 == len(spans)
    return batch, records


def test_the_outputs_of_sampled_records_continue_their_trace_under_a_record_span() -> None:
    tracer, exporter = _tracer()
    sink, clock = Sink(), FakeClock()
    outcome = process_batch(_batch(), clock.monotonic() - 0.05, _ctx(tracer, sink, clock=clock))
    assert outcome.committed and outcome.records == 6
    batch, records = _spans(exporter)
    assert sorted(records) == ["dead_letter:12", "score:a", "score:b"]
    for key, trace_id, parent, name in ((b"a", TRACE_A, SPAN_A, "score:a"),
                                        (b"b", TRACE_B, SPAN_B, "score:b")):
        span = records[name]
        assert span.context.trace_id == trace_id and span.parent is not None
        assert span.parent.span_id == parent and span.parent.is_remote
        assert span.kind is SpanKind.CONSUMER
        assert [link.context.span_id for link in span.links] == [batch.context.span_id]
        tp = parse_traceparent(_headers(sink.out, "t.scores", key)["traceparent"])
        assert tp is not None and (tp.trace_id, tp.span_id) == (trace_id, span.context.span_id)
        assert tp.sampled
    # the review copy carries the same context as its score
    assert _headers(sink.out, "t.review", b"b")["traceparent"] == \
        _headers(sink.out, "t.scores", b"b")["traceparent"]
    # tracestate is forwarded as it came, and is the span's
    assert _headers(sink.out, "t.scores", b"a")["tracestate"] == b"vendor=x"
    assert records["score:a"].context.trace_state.get("vendor") == "x"
    # the dead letter continues its trace too, its span an error
    dead = records["dead_letter:12"]
    dl_tp = parse_traceparent(_headers(sink.out, "t.dead-letter", b"k12")["traceparent"])
    assert dl_tp is not None and (dl_tp.trace_id, dl_tp.span_id) == (TRACE_C, dead.context.span_id)
    assert dead.status.status_code is StatusCode.ERROR
    assert _attrs(dead)["error.type"] == "dead_letter"
    assert _attrs(records["score:b"])["rung.action"] == "block"
    assert _attrs(records["score:b"])["rung.tier"] == "fallback"
    assert _attrs(dead)["messaging.kafka.offset"] == 12


def test_unsampled_and_untraced_records_get_no_span() -> None:
    tracer, exporter = _tracer()
    sink = Sink()
    process_batch(_batch(), 999.0, _ctx(tracer, sink))
    # unsampled: the context passes through unchanged; no headers: none added
    assert _headers(sink.out, "t.scores", b"c")["traceparent"] == _tp(TRACE_C, SPAN_A, flags=0)
    assert "traceparent" not in _headers(sink.out, "t.scores", b"d")
    assert "traceparent" not in _headers(sink.out, "t.scores", b"e")
    _, records = _spans(exporter)
    assert "score:c" not in records and "score:d" not in records


def test_the_batch_span_links_every_traced_record_and_describes_the_batch() -> None:
    tracer, exporter = _tracer()
    clock = FakeClock()
    received = clock.monotonic()
    clock.advance(0.04)
    process_batch(_batch(), received, _ctx(tracer, clock=clock))
    batch, records = _spans(exporter)
    assert batch.kind is SpanKind.CONSUMER and batch.parent is None
    # links to the sampled contexts only (the unsampled one's spans exist nowhere)
    assert [(link.context.trace_id, link.context.span_id) for link in batch.links] == [
        (TRACE_A, SPAN_A), (TRACE_B, SPAN_B), (TRACE_C, SPAN_C)]
    a = _attrs(batch)
    assert a["messaging.system"] == "kafka" and a["messaging.destination.name"] == TOPIC
    assert a["messaging.operation.type"] == "process"
    assert a["messaging.consumer.group.name"] == "g1"
    assert a["messaging.batch.message_count"] == 6 and a["rung.batch.traced_records"] == 4
    assert "messaging.destination.partition.id" not in a  # two partitions
    assert list(a["rung.batch.offset_ranges"]) == ["0:10-14", "1:3-3"]
    assert (a["rung.tier.primary"], a["rung.tier.fallback"]) == (3, 2)
    assert (a["rung.batch.scores"], a["rung.batch.dead_letters"]) == (5, 1)
    assert (a["rung.batch.reviews"], a["rung.batch.committed"]) == (1, True)
    assert (a["rung.batch.produce_s"], a["rung.batch.commit_s"]) == (0.001, 0.002)
    # timed on the batch's clock: from the first record's receipt to the commit's end
    assert batch.start_time == int((clock.wall() - 0.04) * 1e9)
    assert batch.end_time == int(clock.wall() * 1e9)
    assert records["score:a"].start_time == batch.start_time


def test_the_batch_span_stays_open_until_the_committer_commits() -> None:
    tracer, exporter = _tracer()
    clock = FakeClock()
    ctx = _ctx(tracer, clock=clock)
    prepared = prepare_batch(_batch(), clock.monotonic(), ctx)
    assert all(s.name.startswith("score ") for s in exporter.get_finished_spans())
    clock.advance(0.5)
    commit_batch(prepared, ctx)
    batch, _ = _spans(exporter)
    assert batch.end_time is not None and batch.start_time is not None
    assert batch.end_time - batch.start_time == pytest.approx(0.5e9, abs=1e3)


def test_an_aborted_commit_ends_the_batch_span_as_an_error() -> None:
    tracer, exporter = _tracer()
    outcome = process_batch(_batch(), 999.0, _ctx(tracer, Sink(abort=True)))
    assert not outcome.committed
    batch, _ = _spans(exporter)
    assert _attrs(batch)["rung.batch.committed"] is False
    assert batch.status.status_code is StatusCode.ERROR


def test_a_scorer_that_raises_ends_the_batch_span_with_the_error() -> None:
    tracer, exporter = _tracer()
    with pytest.raises(FatalError):
        prepare_batch(_batch(), 999.0, _ctx(tracer, scorer=Scorer(boom=True)))
    (batch,) = exporter.get_finished_spans()
    assert batch.status.status_code is StatusCode.ERROR
    assert [e.name for e in batch.events] == ["exception"]


def test_a_zero_ratio_records_nothing_yet_passes_every_context_through() -> None:
    tracer, exporter = _tracer(ratio=0.0)
    sink = Sink()
    process_batch(_batch(), 999.0, _ctx(tracer, sink))
    assert exporter.get_finished_spans() == ()
    assert _headers(sink.out, "t.scores", b"a")["traceparent"] == _tp(TRACE_A, SPAN_A)
    assert _headers(sink.out, "t.scores", b"a")["tracestate"] == b"vendor=x"
    assert _headers(sink.out, "t.dead-letter", b"k12")["traceparent"] == _tp(TRACE_C, SPAN_C)


def test_links_are_capped() -> None:
    tracer, exporter = _tracer(max_links=2)
    process_batch(_batch(), 999.0, _ctx(tracer))
    batch, _ = _spans(exporter)
    assert len(batch.links) == 2


def test_without_a_tracer_nothing_is_added_to_the_outputs() -> None:
    sink = Sink()
    outcome = process_batch(_batch(), 999.0, _ctx(None, sink))
    assert outcome.committed
    assert all("traceparent" not in dict(r[3]) for r in sink.out)


def test_build_tracer_exports_to_the_given_exporter_with_rung_as_the_service() -> None:
    exporter = InMemorySpanExporter()
    settings = Settings.model_validate({"tracing": {"enabled": True, "service_name": "rung-t"},
                                        "kafka": {"group_id": "g9"}})
    tracer = build_tracer(settings, exporter=exporter)
    assert tracer is not None
    try:
        process_batch(_batch(), 999.0, _ctx(tracer))
        spans = exporter.get_finished_spans()
        assert len(spans) == 4
        assert {s.resource.attributes["service.name"] for s in spans} == {"rung-t"}
        assert {_attrs(s)["messaging.consumer.group.name"] for s in spans} == {"g9"}
    finally:
        tracer.shutdown()
