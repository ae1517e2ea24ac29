"""Record formats (stream_app.kafka.serde) over confluent-kafka's in-process mock registry:
round trips, the errors a bad record becomes, and the pipeline's use of them. The real
registry is exercised in tests/integration/test_registry_formats.py."""

from __future__ import annotations

import struct
import uuid

import orjson
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry._sync.mock_schema_registry_client import (
    MockSchemaRegistryClient,
)

from stream_app.config import FormatSettings, Settings
from stream_app.kafka.errors import FatalError
from stream_app.kafka.records import SourceRecord, decode_batch, output_records
from stream_app.kafka.serde import JSON, RegistryFormat, build_format, registry_client
from topics.catalog import TopicNames
from topics.codec import DecodeError, decode_transaction, encode_score
from topics.formats.avro import SCORE_SCHEMA, schema_text
from topics.schemas import Action, Score

GOOD = {
    "transaction_id": "tx-1", "event_time_s": 1_790_000_000.5, "customer_id": "c1",
    "terminal_id": "t9", "amount": 42.5, "currency": "EUR", "merchant_category": "5411",
    "is_international": False, "has_international_history": True, "account_age_days": 400,
    "channel": "pos",
}
TX = decode_transaction(orjson.dumps(GOOD))
SCORE = Score(transaction_id="tx-1", score=0.93, action=Action.BLOCK, flag_for_review=True,
              tier="primary", model_version="m-7", confidence=0.8, reasons=("amount",),
              latency_s=0.004, scored_at_s=1_790_000_001.0)
TOPIC = "t.transactions"
KINDS = ["avro", "protobuf"]


@pytest.fixture(autouse=True)
def _mock_compatibility(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mock registry has no per-subject config: keep it in a dict per client."""
    def set_compatibility(self: MockSchemaRegistryClient, subject_name: str | None = None,
                          level: str | None = None) -> dict[str, str]:
        self.__dict__.setdefault("_levels", {})[subject_name] = level
        return {"compatibility": str(level)}

    def get_compatibility(self: MockSchemaRegistryClient, subject_name: str | None = None) -> str:
        return str(self.__dict__.get("_levels", {})[subject_name])

    monkeypatch.setattr(MockSchemaRegistryClient, "set_compatibility", set_compatibility)
    monkeypatch.setattr(MockSchemaRegistryClient, "get_compatibility", get_compatibility)


def _mock() -> SchemaRegistryClient:
    return SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4().hex}"})


def _fmt(kind: str) -> RegistryFormat:
    return RegistryFormat(kind, _mock())  # type: ignore[arg-type]


def _record(value: bytes | None, offset: int = 0) -> SourceRecord:
    return SourceRecord(TOPIC, 0, offset, b"k", value)


@pytest.mark.parametrize("kind", KINDS)
def test_transaction_round_trips_in_the_wire_format(kind: str) -> None:
    fmt = _fmt(kind)
    data = fmt.encode_transaction(TX, TOPIC)
    assert data[0] == 0  # magic byte, then the schema id
    schema_id = struct.unpack(">I", data[1:5])[0]
    assert fmt.client.get_schema(schema_id).schema_type == kind.upper()
    assert fmt.decode_transaction(data, TOPIC) == TX


@pytest.mark.parametrize("kind", KINDS)
def test_partial_transaction_gets_the_json_problems(kind: str) -> None:
    fmt = _fmt(kind)
    partial = decode_transaction(orjson.dumps({**GOOD, "amount": None, "channel": "x"}))
    assert set(partial.problems) == {"amount: missing", "channel: invalid"}
    decoded = fmt.decode_transaction(fmt.encode_transaction(partial, TOPIC), TOPIC)
    # the invalid channel was dropped by the producer's decode; on the wire it is absent
    assert decoded.amount is None and decoded.channel is None
    assert set(decoded.problems) == {"amount: missing", "channel: missing"}


@pytest.mark.parametrize("kind", KINDS)
def test_register_sets_backward_and_is_idempotent(kind: str) -> None:
    fmt = _fmt(kind)
    names = TopicNames.with_prefix("p")
    first = fmt.register(names)
    assert set(first) == {"p.transactions-value", "p.scores-value", "p.manual-review-value"}
    assert fmt.register(names) == first
    assert fmt.client.get_compatibility("p.scores-value") == "BACKWARD"
    # what the serializer sends resolves to the registered id
    data = fmt.encode_score(SCORE, names.scores)
    assert struct.unpack(">I", data[1:5])[0] == first["p.scores-value"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value, message", [
    (None, "value is null"),
    (b"{}", "not in the schema registry wire format"),
    (b"\x00\x00", "not in the schema registry wire format"),
    (b"\x00\x00\x00\x30\x39rest", "unknown schema id 12345"),
])
def test_bad_framing_and_unknown_ids_are_decode_errors(kind: str, value: bytes | None,
                                                       message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        _fmt(kind).decode_transaction(value, TOPIC)


@pytest.mark.parametrize("kind", KINDS)
def test_bytes_that_do_not_match_their_schema_are_decode_errors(kind: str) -> None:
    fmt = _fmt(kind)
    good = fmt.encode_transaction(TX, TOPIC)
    header = good[:5] + (b"\x00" if kind == "protobuf" else b"")
    for payload in (b"\xff" * 7, good[len(header):-3]):
        with pytest.raises(DecodeError, match="does not match schema id"):
            fmt.decode_transaction(header + payload, TOPIC)


def test_an_id_of_the_other_format_is_a_decode_error() -> None:
    client = _mock()
    avro_bytes = RegistryFormat("avro", client).encode_transaction(TX, TOPIC)
    with pytest.raises(DecodeError, match="is AVRO; this topic is read as PROTOBUF"):
        RegistryFormat("protobuf", client).decode_transaction(avro_bytes, TOPIC)


@pytest.mark.parametrize("kind", KINDS)
def test_unreachable_registry_is_fatal_not_a_dead_letter(kind: str) -> None:
    fmt = RegistryFormat(kind, registry_client("http://127.0.0.1:1", timeout_s=1.0))  # type: ignore[arg-type]
    with pytest.raises(FatalError, match="unreachable"):
        fmt.decode_transaction(b"\x00\x00\x00\x00\x01payload", TOPIC)
    with pytest.raises(FatalError, match="cannot encode"):
        fmt.encode_score(SCORE, "t.scores")


@pytest.mark.parametrize("kind", KINDS)
def test_decode_batch_scores_the_good_and_dead_letters_the_rest(kind: str) -> None:
    fmt = _fmt(kind)
    good = fmt.encode_transaction(TX, TOPIC)
    records = [_record(good, 0), _record(b"garbage", 1), _record(good, 2),
               _record(b"\x00\x00\x00\x00\x63xx", 3)]
    batch = decode_batch(records, fmt)
    assert batch.txs == [TX, TX] and batch.tx_rows == [0, 2]
    assert [d.source_offset for d in batch.dead] == [1, 3]
    assert "wire format" in batch.dead[0].error and "unknown schema id 99" in batch.dead[1].error
    assert batch.dead[1].original_value == b"\x00\x00\x00\x00\x63xx"


@pytest.mark.parametrize("kind", KINDS)
def test_output_records_encode_scores_in_the_format_and_dead_letters_in_json(kind: str) -> None:
    fmt = _fmt(kind)
    dead = decode_batch([_record(b"junk", 5)], fmt).dead
    flagged = SCORE  # BLOCK: also copied to the review topic, same bytes
    out, reviews = output_records([flagged], dead, scores_topic="t.scores",
                                  review_topic="t.review", dead_letter_topic="t.dlq", fmt=fmt)
    assert reviews == 1
    (t1, k1, v1, _), (t2, _, v2, _), (t3, _, v3, _) = out
    assert (t1, t2, t3) == ("t.scores", "t.review", "t.dlq") and k1 == b"tx-1"
    assert v1 == v2 and v1[0] == 0
    assert orjson.loads(v3)["error"].startswith("not in the schema registry wire format")


def test_json_is_the_default_and_unchanged() -> None:
    assert Settings().format.kind == "json"
    assert build_format(FormatSettings()) is JSON
    records = [_record(orjson.dumps(GOOD))]
    assert decode_batch(records, JSON).txs == decode_batch(records).txs == [TX]
    out, _ = output_records([SCORE], [], scores_topic="s", review_topic=None,
                            dead_letter_topic="d", fmt=JSON)
    assert out[0][2] == encode_score(SCORE)


def test_registry_formats_need_a_url() -> None:
    with pytest.raises(ValueError, match="needs format.registry_url"):
        FormatSettings(kind="avro")
    settings = FormatSettings(kind="avro", registry_url=f"mock://{uuid.uuid4().hex}",
                              registry_password="s3cret")  # type: ignore[arg-type]
    assert "s3cret" not in str(Settings(format=settings).redacted())


def test_build_format_registers_when_asked() -> None:
    url = f"mock://{uuid.uuid4().hex}"
    fmt = build_format(FormatSettings(kind="avro", registry_url=url),
                       TopicNames.with_prefix("b"))
    assert isinstance(fmt, RegistryFormat)
    latest = fmt.client.get_latest_version("b.scores-value")
    assert latest.schema.schema_str == schema_text(SCORE_SCHEMA)
