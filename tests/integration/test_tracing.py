"""Traces through Kafka headers on the real stack: a test producer starts traces, the live
worker (real ladder, real Kafka and Redis, in this process so that the SDK's in-memory
exporter sees its spans) continues them into the committed outputs' headers."""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from opentelemetry.propagate import inject
from opentelemetry.propagators.textmap import default_setter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from opentelemetry.trace import SpanKind, StatusCode, set_span_in_context

from stream_app.config import load_settings
from stream_app.devstack.produce import synthetic_events
from stream_app.kafka.readback import Record, read_topic
from stream_app.live.worker import Worker
from stream_app.tracing import build_tracer, parse_traceparent
from stream_app.wiring import build_scorer
from tests.integration.workers import exactly_once_report
from topics.catalog import TopicNames
from topics.codec import transaction_to_dict

pytestmark = pytest.mark.integration

SAMPLED, UNSAMPLED, BAD, BARE = 240, 40, 12, 30


class _Producer:
    """Produces transactions, each under its own producer span (a new trace)."""

    def __init__(self, conf: dict[str, Any], topic: str) -> None:
        self.topic = topic
        self.kafka = Producer({**conf, "enable.idempotence": True, "acks": "all"})
        self.exporter = InMemorySpanExporter()
        self.sampled = TracerProvider(sampler=ALWAYS_ON)
        self.sampled.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.unsampled = TracerProvider(sampler=ALWAYS_OFF)
        self.sent: dict[bytes, dict[str, bytes]] = {}  # key -> headers sent

    def send(self, key: bytes, value: bytes, provider: TracerProvider | None) -> None:
        headers: dict[str, bytes] = {}
        if provider is not None:
            tracer = provider.get_tracer("test-producer")
            with tracer.start_as_current_span(f"send {self.topic}",
                                              kind=SpanKind.PRODUCER) as span:
                carrier: dict[str, str] = {}
                inject(carrier, context=set_span_in_context(span), setter=default_setter)
                headers = {k: v.encode() for k, v in carrier.items()}
                if provider is self.sampled:
                    headers["tracestate"] = b"test=1"
        self.sent[key] = headers
        self.kafka.produce(self.topic, value, key, headers=list(headers.items()) or None)
        self.kafka.poll(0)

    def flush(self) -> None:
        assert self.kafka.flush(30.0) == 0


def _run_worker(settings: Any, tracer: Any, expected: int) -> Worker:
    scorer = build_scorer(settings)
    worker = Worker(settings, scorer, shutdown_timeout_s=10.0, tracer=tracer)
    runner = threading.Thread(target=worker.run, name="tracing-worker", daemon=True)
    runner.start()
    try:
        end = time.monotonic() + 180.0
        while worker.records_committed < expected and time.monotonic() < end \
                and runner.is_alive():
            time.sleep(0.2)
    finally:
        worker.stop()
        runner.join(60.0)
        scorer.close()
    assert worker.fatal_reason is None
    assert worker.records_committed == expected
    return worker


def _by_key(records: list[Record]) -> dict[bytes, Record]:
    out = {r.key: r for r in records if r.key is not None}
    assert len(out) == len(records)  # one each
    return out


def test_a_producer_trace_shows_the_batch_span_and_continues_into_the_outputs(
        kafka_conf: dict[str, Any], redis_url: str, prefix: str,
        topic_names: TopicNames) -> None:
    settings = load_settings(kafka__bootstrap_servers=kafka_conf["bootstrap.servers"],
                             kafka__group_id=f"{prefix}-group", topics__prefix=prefix,
                             redis__url=redis_url, tracing__enabled=True,
                             tracing__max_links=1000,  # every traced record linked
                             batch__max_records=50)  # several batches, pipelined commits
    rung_spans = InMemorySpanExporter()
    tracer = build_tracer(settings, exporter=rung_spans)
    assert tracer is not None
    producer = _Producer(kafka_conf, topic_names.transactions)
    events = list(synthetic_events(SAMPLED + UNSAMPLED + BARE, f"{prefix}-tx"))
    kinds: dict[bytes, str] = {}
    for i, tx in enumerate(events):
        key, value = tx.transaction_id.encode(), orjson.dumps(transaction_to_dict(tx))
        kind = "sampled" if i < SAMPLED else "unsampled" if i < SAMPLED + UNSAMPLED else "bare"
        provider = {"sampled": producer.sampled, "unsampled": producer.unsampled}.get(kind)
        producer.send(key, value, provider)
        kinds[key] = kind
        if i % 25 == 0 and len([k for k in kinds if kinds[k] == "bad"]) < BAD:
            bad_key = f"{prefix}-bad-{i}".encode()
            producer.send(bad_key, b"\xff not json", producer.sampled)
            kinds[bad_key] = "bad"
    producer.flush()
    total = len(kinds)
    assert sum(1 for k in kinds.values() if k == "bad") == BAD

    try:
        _run_worker(settings, tracer, total)
    finally:
        tracer.shutdown()

    scores, dead = read_topic(kafka_conf, topic_names.scores), \
        read_topic(kafka_conf, topic_names.dead_letter)
    review = read_topic(kafka_conf, topic_names.review)
    assert exactly_once_report(list(kinds), scores, dead) == (0, 0)
    out = _by_key(scores)
    out.update({r.key: r for r in dead if r.key is not None})
    assert len(out) == total

    spans = rung_spans.get_finished_spans()
    batches = {s.context.span_id: s for s in spans if s.name.startswith("process ")}
    records = {s.context.span_id: s for s in spans if s.name.startswith("score ")}
    assert len(batches) + len(records) == len(spans)
    producer_spans = {s.context.trace_id: s for s in producer.exporter.get_finished_spans()}

    # Every batch committed; together they hold every record once.
    assert len(batches) >= total // 50
    assert all(_attrs(b)["rung.batch.committed"] is True for b in batches.values())
    assert sum(_attrs(b)["messaging.batch.message_count"] for b in batches.values()) == total
    assert {_attrs(b)["messaging.destination.name"] for b in batches.values()} == {
        topic_names.transactions}
    linked = {(link.context.trace_id, link.context.span_id)
              for b in batches.values() for link in b.links}

    continued = 0
    for key, kind in kinds.items():
        sent = producer.sent[key]
        got = out[key].headers
        if kind == "bare":
            assert "traceparent" not in got
            continue
        sent_tp = parse_traceparent(sent["traceparent"])
        assert sent_tp is not None
        if kind == "unsampled":  # passed through as it came, no span of rung's
            assert got["traceparent"] == sent["traceparent"]
            assert not sent_tp.sampled and (sent_tp.trace_id, sent_tp.span_id) not in linked
            continue
        # sampled (a score or a dead letter): the producer's trace, rung's record span
        got_tp = parse_traceparent(got["traceparent"])
        assert got_tp is not None and got_tp.sampled
        assert got_tp.trace_id == sent_tp.trace_id
        assert got.get("tracestate") == b"test=1"
        span = records[got_tp.span_id]
        producer_span = producer_spans[sent_tp.trace_id]
        assert span.parent is not None and span.parent.span_id == producer_span.context.span_id
        assert span.context.trace_id == producer_span.context.trace_id
        # ... and the trace shows the batch span: the record span links to it, it links back
        (link,) = span.links
        batch = batches[link.context.span_id]
        assert (sent_tp.trace_id, sent_tp.span_id) in {
            (lk.context.trace_id, lk.context.span_id) for lk in batch.links}
        assert _attrs(span)["messaging.kafka.offset"] >= 0
        if kind == "bad":
            assert span.status.status_code is StatusCode.ERROR
            assert _attrs(span)["error.type"] == "dead_letter"
        else:
            assert _attrs(span)["rung.transaction_id"] == key.decode()
        continued += 1
    assert continued == SAMPLED + BAD == len(records)

    # A review copy carries its score's context (what needs review is the ladder's call).
    for r in review:
        assert r.key is not None
        assert r.headers.get("traceparent") == out[r.key].headers.get("traceparent")


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})
