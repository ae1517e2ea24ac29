"""W3C trace context in Kafka headers: parsing, formatting, sampling; no broker, no spans."""

from __future__ import annotations

import random

import pytest
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from stream_app.config import Settings
from stream_app.faust_runtime import source_record
from stream_app.kafka.records import (
    HEADER_ERROR,
    HEADER_TIER,
    SourceRecord,
    from_message,
    output_records,
)
from stream_app.tracing import (
    TraceParent,
    build_tracer,
    format_traceparent,
    parse_traceparent,
    passthrough_headers,
    ratio_bound,
    trace_context,
)
from topics.schemas import Action, DeadLetter, Score, Tier

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01".encode()


def test_a_valid_traceparent_parses_to_ids_and_flags() -> None:
    tp = parse_traceparent(VALID)
    assert tp == TraceParent(int(TRACE, 16), int(SPAN, 16), 1, VALID)
    assert tp is not None and tp.sampled
    unsampled = parse_traceparent(f"00-{TRACE}-{SPAN}-00")
    assert unsampled is not None and not unsampled.sampled


@pytest.mark.parametrize("value", [
    f"00-{TRACE.upper()}-{SPAN}-01",          # uppercase hex
    f"00-{TRACE}-{SPAN}-01-extra",            # version 00 with trailing data
    f"ff-{TRACE}-{SPAN}-01",                  # version ff is invalid
    f"00-{'0' * 32}-{SPAN}-01",               # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",              # all-zero parent id
    f"00-{TRACE[:-1]}-{SPAN}-01",             # short trace id
    f"00_{TRACE}_{SPAN}_01",                  # wrong separators
    f"00-{TRACE}-{SPAN}-01\n",                # trailing newline
    "", "garbage",
])
def test_invalid_traceparents_are_ignored(value: str) -> None:
    assert parse_traceparent(value) is None
    assert parse_traceparent(value.encode()) is None


def test_a_later_version_with_more_fields_is_read_as_version_00() -> None:
    tp = parse_traceparent(f"01-{TRACE}-{SPAN}-03-what-comes-next".encode())
    assert tp is not None and (tp.trace_id, tp.span_id, tp.flags) == (int(TRACE, 16),
                                                                       int(SPAN, 16), 3)


def test_format_round_trips_through_parse() -> None:
    out = format_traceparent(int(TRACE, 16), 0xABC, 0x101)
    assert out == f"00-{TRACE}-0000000000000abc-01".encode()
    tp = parse_traceparent(out)
    assert tp is not None and (tp.span_id, tp.flags) == (0xABC, 1)


def test_trace_context_reads_headers_lists_and_mappings() -> None:
    assert trace_context(None) is None and trace_context([]) is None
    assert trace_context([("other", b"x")]) is None
    tp = trace_context([("rung-x", None), ("traceparent", VALID), ("tracestate", b"a=1"),
                        ("tracestate", b"b=2")])
    assert tp is not None and tp.state == b"a=1,b=2" and tp.raw == VALID
    from_map = trace_context({"traceparent": VALID})
    assert from_map is not None and from_map.state is None
    assert passthrough_headers(tp) == [("traceparent", VALID), ("tracestate", b"a=1,b=2")]


def test_two_traceparent_headers_make_the_context_invalid() -> None:
    assert trace_context([("traceparent", VALID), ("traceparent", VALID)]) is None
    assert trace_context([("Traceparent", VALID)]) is None  # keys are lowercase
    assert trace_context([("traceparent", b"00-nope")]) is None


def test_the_record_ratio_keeps_the_same_traces_as_the_sdk_sampler() -> None:
    rng = random.Random(7)
    for ratio in (0.0, 0.01, 0.25, 0.5, 1.0):
        sdk = TraceIdRatioBased(ratio)
        bound = ratio_bound(ratio)
        for _ in range(2000):
            trace_id = rng.getrandbits(128) or 1
            decision = sdk.should_sample(None, trace_id, "x").decision
            kept = decision.is_sampled()  # type: ignore[no-untyped-call]
            assert ((trace_id & ((1 << 64) - 1)) < bound) == kept


class _Msg:
    def __init__(self, headers: list[tuple[str, bytes | None]] | None) -> None:
        self._headers = headers

    def topic(self) -> str:
        return "in"

    def partition(self) -> int:
        return 2

    def offset(self) -> int:
        return 40

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self._headers


def test_from_message_keeps_the_headers_last_and_none_when_there_are_none() -> None:
    hs = [("traceparent", VALID)]
    rec = from_message(_Msg(hs))  # type: ignore[arg-type]
    assert rec == SourceRecord("in", 2, 40, b"k", b"v", 1_700_000_000.0, hs)
    assert rec.headers is hs  # librdkafka's list, not copied
    assert from_message(_Msg(None)).headers is None  # type: ignore[arg-type]
    assert SourceRecord("in", 0, 0, None, None).headers is None  # the default


class _FaustMessage:
    def __init__(self, headers: object) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = "in", 1, 3, b"k", b"v"
        self.headers = headers


class _Event:
    def __init__(self, headers: object) -> None:
        self.message = _FaustMessage(headers)


def test_faust_source_records_carry_their_headers() -> None:
    assert source_record(_Event([("traceparent", VALID)])).headers == [("traceparent", VALID)]
    assert source_record(_Event({"traceparent": VALID})).headers == [("traceparent", VALID)]
    assert source_record(_Event(())).headers is None
    assert source_record(_Event(None)).headers is None


def _score(tx_id: str, action: Action = Action.ALLOW) -> Score:
    return Score(tx_id, 0.1, action, False, Tier.PRIMARY, "p-1", 0.9, (), 0.0, 0.0)


def test_output_records_append_extra_headers_to_scores_reviews_and_dead_letters() -> None:
    scores = [_score("a"), _score("b", Action.BLOCK)]
    dead = [DeadLetter("bad json", "in", 0, 5, b"k", b"x")]
    extra = [("traceparent", VALID)]
    out, reviews = output_records(scores, dead, scores_topic="s", review_topic="r",
                                  dead_letter_topic="d", score_headers=[None, extra],
                                  dead_headers=[extra])
    assert reviews == 1
    by = {(t, k): h for t, k, _, h in out}
    assert by[("s", b"a")] == [(HEADER_TIER, b"primary"), ("rung-model-version", b"p-1")]
    assert by[("s", b"b")][-1] == ("traceparent", VALID)
    assert by[("r", b"b")][-1] == ("traceparent", VALID)  # the review copy too
    assert by[("d", b"k")] == [(HEADER_ERROR, b"bad json"), ("traceparent", VALID)]
    with pytest.raises(ValueError):  # one extra per score, checked
        output_records(scores, dead, scores_topic="s", review_topic=None, dead_letter_topic="d",
                       score_headers=[extra])


def test_tracing_is_off_by_default_and_configured_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().tracing.enabled is False
    assert build_tracer(Settings()) is None
    monkeypatch.setenv("RUNG_TRACING__ENABLED", "true")
    monkeypatch.setenv("RUNG_TRACING__OTLP_ENDPOINT", "http://collector:4318/v1/traces")
    monkeypatch.setenv("RUNG_TRACING__SAMPLE_RATIO", "0.25")
    t = Settings().tracing
    assert (t.enabled, t.otlp_endpoint, t.sample_ratio) == (
        True, "http://collector:4318/v1/traces", 0.25)
    monkeypatch.setenv("RUNG_TRACING__SAMPLE_RATIO", "1.5")
    with pytest.raises(ValueError):
        Settings()


def test_enabled_without_the_sdk_fails_with_a_clear_message(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from stream_app.tracing import TracingUnavailable

    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # import fails
    with pytest.raises(TracingUnavailable, match=r"rung\[otel\]"):
        build_tracer(Settings.model_validate({"tracing": {"enabled": True}}))


def test_rung_runs_without_the_otel_extra_while_tracing_is_off() -> None:
    """A process where `opentelemetry` cannot be imported (the extra not installed) still
    imports every runtime and builds no tracer (redis-py probes for it on its own)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['opentelemetry'] = None; "
            "import stream_app.live.runner, stream_app.faust_runtime, stream_app.pipeline; "
            "from stream_app.config import Settings; from stream_app.tracing import build_tracer; "
            "assert build_tracer(Settings()) is None; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
