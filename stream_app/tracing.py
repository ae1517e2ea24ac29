"""OpenTelemetry traces through Kafka headers: W3C trace context in, spans, context out.

Off by default (`tracing.enabled`); then `BatchContext.tracer` is None, nothing here
is imported and the pipeline's only per-record cost is the headers list that
`from_message` keeps (librdkafka's list, None when a record has none). On, with the
`otel` extra installed (`pip install 'rung[otel]'`), every batch gets:

- a **batch span** `process <topic>` (kind CONSUMER, a root: a batch mixes records of
  many traces) from the first record's receipt to the end of its commit, with a link
  to each record's context that is sampled (at most `tracing.max_links`; an unsampled
  context names spans nobody records, and links cost), the messaging.*
  attributes of the OpenTelemetry semantic conventions (system `kafka`, destination,
  consumer group, batch message count, the partition when there is one) and rung's
  own: the offset range per partition, answers per tier, dead letters, reviews, shed
  records, the stage durations and whether the batch committed (an aborted batch's span
  ends with status ERROR; its records come again in a new batch);
- for each record whose `traceparent` is **sampled** (its sampled flag is set and its
  trace id falls in `tracing.sample_ratio`, the SDK's `TraceIdRatioBased` rule, so the
  same traces are kept by every service using the same ratio), a **record span**
  `score <topic>`: a child of the record's context, linked to the batch span, with
  its partition and offset, the transaction id, tier, action and shed reason (a dead
  letter: `error.type` and its error, status ERROR);
- in the headers of everything produced for a traced record (its score, its review
  copy, or its dead letter): `traceparent` = the input's trace id, **the record span's
  id** as parent id and its flags, and the input's `tracestate` as it came. A record
  that is not sampled gets no span, and its outputs carry the input's `traceparent`
  and `tracestate` unchanged: rung passes the context through, as W3C trace context
  asks of a participant that records nothing. The batch span is never written as a
  parent: it lives in a trace of its own, and its id under the input's trace id
  would name a span that trace does not have.

A record without a (valid) `traceparent` only counts in the batch span. Multiple
`traceparent` headers make the context invalid (W3C), multiple `tracestate` headers
are joined with commas.

Spans are exported over OTLP/HTTP (`tracing.otlp_endpoint`) by the SDK's batch
processor: its own thread, a bounded queue that drops rather than blocks the loop.
Without an endpoint spans are made (ids for the headers) but go nowhere. The clock of
the batch (`BatchContext.clock`) times the spans, so unit tests drive a fake one.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import structlog

from stream_app.kafka.records import Headers, RecordHeaders, SourceRecord

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

    from scorers.clock import Clock
    from stream_app.config import Settings
    from stream_app.kafka.records import DecodedBatch
    from stream_app.pipeline import BatchSink, PreparedBatch
    from topics.schemas import DeadLetter, Score

log = structlog.get_logger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
INSTRUMENTATION = "rung.stream_app"
# version-traceid-parentid-flags, lowercase hex; a later version may append "-..." fields
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?",
                          re.DOTALL)
_TRACE_ID_LOW = (1 << 64) - 1
_SAMPLED = 0x01
_tuple_new = tuple.__new__


class TracingUnavailable(RuntimeError):
    """Tracing is enabled but the OpenTelemetry SDK is not installed."""


class TraceParent(NamedTuple):
    """A record's incoming W3C trace context (a tuple: built per traced record)."""

    trace_id: int
    span_id: int
    flags: int
    raw: bytes  # the traceparent header as it came (forwarded when rung records no span)
    state: bytes | None = None  # the tracestate header(s) as they came

    @property
    def sampled(self) -> bool:
        return bool(self.flags & _SAMPLED)


def parse_traceparent(value: bytes | str | None) -> TraceParent | None:
    """A `traceparent` value → `TraceParent`, None when W3C says it is invalid: not
    lowercase hex, version ff, version 00 with trailing data, all-zero ids."""
    if value is None:
        return None
    raw = value.encode("ascii", "replace") if isinstance(value, str) else bytes(value)
    m = _TRACEPARENT.fullmatch(raw)
    if m is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = m.groups()
    if version == b"ff" or (version == b"00" and rest is not None):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return _tuple_new(TraceParent, (trace_id, span_id, int(flags_hex, 16), raw, None))


def format_traceparent(trace_id: int, span_id: int, flags: int) -> bytes:
    """Version-00 `traceparent` bytes."""
    return b"00-%032x-%016x-%02x" % (trace_id, span_id, flags & 0xFF)


def trace_context(headers: RecordHeaders | Mapping[str, bytes | None] | None) -> TraceParent | None:
    """The W3C context a record's headers carry, if any (keys are lowercase, as the
    OpenTelemetry Kafka instrumentations write them)."""
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    parent: bytes | str | None = None
    state: bytes | None = None
    n = 0
    for key, value in pairs:
        if key == TRACEPARENT:
            n += 1
            parent = value
        elif key == TRACESTATE and value:
            v = value.encode() if isinstance(value, str) else bytes(value)
            state = v if state is None else state + b"," + v
    if n != 1:
        return None
    tp = parse_traceparent(parent)
    if tp is None or state is None:
        return tp
    return tp._replace(state=state)


def passthrough_headers(tp: TraceParent) -> Headers:
    """The input's context, unchanged: what the outputs of an unsampled record carry."""
    out: Headers = [(TRACEPARENT, tp.raw)]
    if tp.state:
        out.append((TRACESTATE, tp.state))
    return out


def ratio_bound(ratio: float) -> int:
    """The SDK's `TraceIdRatioBased` bound: a trace is kept when its low 64 bits are below."""
    return round(min(1.0, max(0.0, ratio)) * (_TRACE_ID_LOW + 1))


class BatchTracer:
    """Makes the spans of every batch of one runtime (`build_tracer` builds it from
    settings; tests hand in a provider with an in-memory exporter)."""

    def __init__(self, provider: TracerProvider, *, sample_ratio: float = 1.0,
                 max_links: int = 128, group_id: str | None = None) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.span import TraceState

        self._api = trace
        self._trace_state = TraceState
        self.provider = provider
        self.tracer = provider.get_tracer(INSTRUMENTATION)
        self.sample_ratio = sample_ratio
        self._bound = ratio_bound(sample_ratio)
        self.max_links = max_links
        base: dict[str, Any] = {"messaging.system": "kafka",
                                "messaging.operation.type": "process"}
        if group_id:
            base["messaging.consumer.group.name"] = group_id
        self._base = base

    def records_span(self, tp: TraceParent) -> bool:
        """Whether rung records a span for a record with this context."""
        return tp.sampled and (tp.trace_id & _TRACE_ID_LOW) < self._bound

    @contextmanager
    def batch(self, records: Sequence[SourceRecord], first_received_s: float,
              clock: Clock) -> Iterator[BatchTrace]:
        """The batch's trace; if the body raises, its spans end with the error."""
        trace = self.begin(records, first_received_s, clock)
        try:
            yield trace
        except BaseException as exc:
            trace.fail(exc)
            raise

    def begin(self, records: Sequence[SourceRecord], first_received_s: float,
              clock: Clock) -> BatchTrace:
        """Start the batch span at the first record's receipt; find the traced records."""
        parents: list[tuple[int, TraceParent]] = []
        for row, rec in enumerate(records):
            headers = rec.headers
            if headers:
                tp = trace_context(headers)
                if tp is not None:
                    parents.append((row, tp))
        start_ns = int((clock.wall() - max(0.0, clock.monotonic() - first_received_s)) * 1e9)
        api = self._api
        topic = records[0].topic if records else ""
        span = self.tracer.start_span(f"process {topic}", kind=api.SpanKind.CONSUMER,
                                      start_time=start_ns)
        if span.is_recording():  # else links and attributes would be dropped: skip the work
            span.set_attributes(self._batch_attributes(records, topic, len(parents)))
            links = 0
            for _, tp in parents:  # sampled contexts only: nothing records the others
                if links >= self.max_links:
                    break
                if tp.flags & _SAMPLED:
                    span.add_link(api.SpanContext(tp.trace_id, tp.span_id, True,
                                                  api.TraceFlags(tp.flags & 0xFF)))
                    links += 1
        return BatchTrace(self, span, records, parents, clock, start_ns)

    def _batch_attributes(self, records: Sequence[SourceRecord], topic: str,
                          traced: int) -> dict[str, Any]:
        ranges: dict[int, list[int]] = {}
        for rec in records:
            lo_hi = ranges.get(rec.partition)
            if lo_hi is None:
                ranges[rec.partition] = [rec.offset, rec.offset]
            elif rec.offset < lo_hi[0]:
                lo_hi[0] = rec.offset
            elif rec.offset > lo_hi[1]:
                lo_hi[1] = rec.offset
        attrs = dict(self._base)
        attrs.update({"messaging.operation.name": "process", "messaging.destination.name": topic,
                      "messaging.batch.message_count": len(records),
                      "rung.batch.traced_records": traced,
                      "rung.batch.offset_ranges": [f"{p}:{lo}-{hi}" for p, (lo, hi)
                                                   in sorted(ranges.items())]})
        if len(ranges) == 1:
            attrs["messaging.destination.partition.id"] = str(next(iter(ranges)))
        return attrs

    def record_span(self, tp: TraceParent, rec: SourceRecord, batch_span: Span, start_ns: int,
                    attributes: dict[str, Any]) -> Span:
        """A record span: child of the record's context, linked to its batch span."""
        api = self._api
        state = self._trace_state.from_header([tp.state.decode("ascii", "replace")]) \
            if tp.state else None
        parent = api.SpanContext(tp.trace_id, tp.span_id, True, api.TraceFlags(tp.flags & 0xFF),
                                 state)
        attrs = dict(self._base)
        attrs.update({"messaging.operation.name": "score",
                      "messaging.destination.name": rec.topic,
                      "messaging.destination.partition.id": str(rec.partition),
                      "messaging.kafka.offset": rec.offset})
        attrs.update(attributes)
        return self.tracer.start_span(
            f"score {rec.topic}", context=api.set_span_in_context(api.NonRecordingSpan(parent)),
            kind=api.SpanKind.CONSUMER, links=[api.Link(batch_span.get_span_context())],
            start_time=start_ns, attributes=attrs)

    def shutdown(self) -> None:
        """Export what is queued and stop the exporters (process exit)."""
        self.provider.shutdown()


class BatchTrace:
    """One batch's spans, from `prepare_batch` (loop thread) to `commit_batch`
    (committer thread); used by one thread at a time."""

    __slots__ = ("_ended", "clock", "owner", "parents", "records", "span", "start_ns")

    def __init__(self, owner: BatchTracer, span: Span, records: Sequence[SourceRecord],
                 parents: list[tuple[int, TraceParent]], clock: Clock, start_ns: int) -> None:
        self.owner, self.span, self.records, self.parents = owner, span, records, parents
        self.clock, self.start_ns = clock, start_ns
        self._ended = False

    def _now_ns(self) -> int:
        return int(self.clock.wall() * 1e9)

    def scored(self, decoded: DecodedBatch, scores: Sequence[Score],
               shed: Sequence[str] | None) -> tuple[list[Headers | None] | None,
                                                    list[Headers | None] | None]:
        """Record spans for the sampled records; the extra headers of each score and
        each dead letter (`output_records`' `score_headers`, `dead_headers`)."""
        span = self.span
        if span.is_recording():
            attrs: dict[str, Any] = {f"rung.tier.{t}": n
                                     for t, n in Counter(s.tier for s in scores).items()}
            attrs["rung.batch.scores"] = len(scores)
            attrs["rung.batch.dead_letters"] = len(decoded.dead)
            span.set_attributes(attrs)
        if not self.parents:
            return None, None
        score_at = {row: i for i, row in enumerate(decoded.tx_rows)}
        score_headers: list[Headers | None] = [None] * len(scores)
        dead_headers: list[Headers | None] | None = None
        dead_at: dict[tuple[str, int, int], int] = {}
        for row, tp in self.parents:
            i = score_at.get(row)
            if i is not None:
                score_headers[i] = self._continue(tp, row, score=scores[i],
                                                  shed=shed[i] if shed else "")
                continue
            if dead_headers is None:
                dead_headers = [None] * len(decoded.dead)
                dead_at = {(d.source_topic, d.source_partition, d.source_offset): j
                           for j, d in enumerate(decoded.dead)}
            rec = self.records[row]
            j = dead_at.get((rec.topic, rec.partition, rec.offset))
            if j is not None:  # always: every record is one score or one dead letter
                dead_headers[j] = self._continue(tp, row, dead=decoded.dead[j])
        return score_headers, dead_headers

    def _continue(self, tp: TraceParent, row: int, *, score: Score | None = None,
                  dead: DeadLetter | None = None, shed: str = "") -> Headers:
        owner = self.owner
        if not owner.records_span(tp):
            return passthrough_headers(tp)
        attrs: dict[str, Any]
        # Few attributes: the SDK checks each one, which is most of a record span's cost;
        # the rest of the answer is in the score record the span's context travels with.
        if score is not None:
            attrs = {"rung.transaction_id": score.transaction_id, "rung.tier": score.tier,
                     "rung.action": score.action.value}
            if shed:
                attrs["rung.shed"] = shed
        else:
            assert dead is not None
            attrs = {"error.type": "dead_letter", "rung.dead_letter.error": dead.error[:256]}
        span = owner.record_span(tp, self.records[row], self.span, self.start_ns, attrs)
        if dead is not None:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, "dead-lettered"))
        span.end(end_time=self._now_ns())
        ctx = span.get_span_context()
        out: Headers = [(TRACEPARENT, format_traceparent(ctx.trace_id, ctx.span_id,
                                                         int(ctx.trace_flags)))]
        if tp.state:
            out.append((TRACESTATE, tp.state))
        return out

    def commit(self, sink: BatchSink, prepared: PreparedBatch) -> Mapping[str, float] | None:
        """`sink.commit` inside the batch span, which ends with it."""
        try:
            stages = sink.commit(prepared.out, prepared.records)
        except BaseException as exc:
            self.fail(exc)
            raise
        span = self.span
        if span.is_recording():
            attrs: dict[str, Any] = {"rung.batch.committed": stages is not None,
                                     "rung.batch.reviews": prepared.reviews,
                                     "rung.batch.shed": prepared.shed,
                                     "rung.batch.decode_s": prepared.decode_s,
                                     "rung.batch.score_s": prepared.score_s}
            for stage, seconds in (stages or {}).items():
                attrs[f"rung.batch.{stage}_s"] = seconds
            span.set_attributes(attrs)
            if stages is None:
                from opentelemetry.trace import Status, StatusCode

                span.set_status(Status(StatusCode.ERROR, "transaction aborted, batch rewound"))
        self._end()
        return stages

    def fail(self, exc: BaseException) -> None:
        """The batch could not be answered or committed: the batch span ends with the error."""
        if self._ended:
            return
        from opentelemetry.trace import Status, StatusCode

        self.span.record_exception(exc)
        self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:512]))
        self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self.span.end(end_time=self._now_ns())


def build_tracer(settings: Settings, *,
                 exporter: SpanExporter | None = None) -> BatchTracer | None:
    """The runtime's tracer from `settings.tracing`; None when tracing is off. `exporter`
    (tests: the SDK's in-memory one) gets every span synchronously, besides OTLP."""
    t = settings.tracing
    if not t.enabled:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import SpanLimits, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise TracingUnavailable("tracing.enabled needs the OpenTelemetry SDK: "
                                 "pip install 'rung[otel]'") from exc
    resource = Resource.create({"service.name": t.service_name,
                                "service.instance.id": settings.kafka.instance_id})
    provider = TracerProvider(resource=resource,
                              sampler=ParentBased(TraceIdRatioBased(t.sample_ratio)),
                              span_limits=SpanLimits(max_links=t.max_links))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if t.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=t.otlp_endpoint)))
    log.info("tracing_enabled", otlp_endpoint=t.otlp_endpoint, sample_ratio=t.sample_ratio,
             max_links=t.max_links, service_name=t.service_name)
    return BatchTracer(provider, sample_ratio=t.sample_ratio, max_links=t.max_links,
                       group_id=settings.kafka.group_id)
