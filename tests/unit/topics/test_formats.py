"""The Avro and Protobuf schemas are the dataclasses of `topics.schemas`, field for field,
and decoded values meet the JSON contract's checks."""

from __future__ import annotations

import dataclasses
import io
import json

import fastavro
import orjson
import pytest
from google.protobuf import descriptor_pb2

from topics.codec import (
    DecodeError,
    decode_transaction,
    score_to_dict,
    transaction_to_dict,
)
from topics.formats import avro, protobuf, wire
from topics.schemas import Action, Score, Transaction

GOOD = {
    "transaction_id": "tx-1", "event_time_s": 1_790_000_000.5, "customer_id": "c1",
    "terminal_id": "t9", "amount": 42.5, "currency": "EUR", "merchant_category": "5411",
    "is_international": False, "has_international_history": True, "account_age_days": 400,
    "channel": "pos",
}
SCORE = Score(transaction_id="tx-1", score=0.93, action=Action.BLOCK, flag_for_review=True,
              tier="primary", model_version="m-7", confidence=0.8, reasons=("amount", "mcc"),
              latency_s=0.004, scored_at_s=1_790_000_001.0, replay_id="r-1",
              policy_version="p-3")

# Protobuf field numbers are positions in the dataclass: once published they must never
# change. A new field goes at the end (and gets the next number); this pins today's.
PINNED_NUMBERS = {
    "Transaction": ["transaction_id", "event_time_s", "customer_id", "terminal_id", "amount",
                    "currency", "merchant_category", "is_international",
                    "has_international_history", "account_age_days", "channel"],
    "Score": ["transaction_id", "score", "action", "flag_for_review", "tier", "model_version",
              "confidence", "reasons", "latency_s", "scored_at_s", "replay_id",
              "policy_version"],
}


def test_wire_fields_are_the_json_contract_fields() -> None:
    tx = decode_transaction(orjson.dumps(GOOD))
    assert [f.name for f in wire.TRANSACTION_FIELDS] == list(transaction_to_dict(tx))
    assert [f.name for f in wire.SCORE_FIELDS] == list(score_to_dict(SCORE))
    dataclass_names = [f.name for f in dataclasses.fields(Score)]
    assert [f.name for f in wire.SCORE_FIELDS] == dataclass_names
    assert {f.name for f in dataclasses.fields(Transaction)} - {
        f.name for f in wire.TRANSACTION_FIELDS} == {"problems"}


def test_wire_kinds_follow_the_type_hints() -> None:
    kinds = {f.name: (f.kind, f.optional) for f in wire.SCORE_FIELDS}
    assert kinds["score"] == ("double", False)
    assert kinds["action"] == ("string", False)
    assert kinds["flag_for_review"] == ("boolean", False)
    assert kinds["reasons"] == ("strings", False)
    assert kinds["replay_id"] == ("string", True)
    tx_kinds = {f.name: (f.kind, f.optional) for f in wire.TRANSACTION_FIELDS}
    assert tx_kinds["transaction_id"] == ("string", False)
    assert tx_kinds["account_age_days"] == ("long", True)
    assert tx_kinds["is_international"] == ("boolean", True)


def test_a_field_of_an_unknown_kind_is_refused() -> None:
    @dataclasses.dataclass
    class WithDict:
        name: str
        extra: dict[str, str]

    @dataclasses.dataclass
    class WithUnion:
        value: int | str | None

    with pytest.raises(TypeError, match="WithDict.extra"):
        wire.wire_fields(WithDict)
    with pytest.raises(TypeError, match="WithUnion.value"):
        wire.wire_fields(WithUnion)


def test_a_new_dataclass_field_reaches_every_format() -> None:
    @dataclasses.dataclass
    class Later:
        transaction_id: str
        note: str | None = None

    fields = wire.wire_fields(Later)
    schema = avro.record_schema("Later", fields, "test")
    assert schema["fields"][-1] == {"name": "note", "type": ["null", "string"], "default": None}
    fdp = protobuf.file_descriptor("Later", fields)
    assert "optional string note = 2;" in protobuf.proto_text(fdp)


# ---- Avro -----------------------------------------------------------------------------

def test_avro_schemas_parse_and_match_the_wire_fields() -> None:
    for schema, fields in ((avro.TRANSACTION_SCHEMA, wire.TRANSACTION_FIELDS),
                           (avro.SCORE_SCHEMA, wire.SCORE_FIELDS)):
        fastavro.parse_schema(json.loads(avro.schema_text(schema)))
        assert [f["name"] for f in schema["fields"]] == [f.name for f in fields]
        for f, wf in zip(schema["fields"], fields, strict=True):
            assert ("default" in f) == wf.optional
            assert (isinstance(f["type"], list) and f["type"][0] == "null") == wf.optional


def _avro_round_trip(schema: dict[str, object], record: dict[str, object],
                     reader: dict[str, object] | None = None) -> dict[str, object]:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    buf.seek(0)
    parsed_reader = fastavro.parse_schema(reader) if reader is not None else None
    out = fastavro.schemaless_reader(buf, fastavro.parse_schema(schema), parsed_reader)
    assert isinstance(out, dict)
    return out


def test_avro_transaction_decodes_to_the_same_transaction_as_json() -> None:
    out = _avro_round_trip(avro.TRANSACTION_SCHEMA, GOOD)
    assert wire.transaction_from_dict(out) == decode_transaction(orjson.dumps(GOOD))


def test_avro_missing_and_invalid_fields_get_the_json_problems() -> None:
    record = {**GOOD, "amount": None, "channel": "telepathy", "account_age_days": -3}
    out = _avro_round_trip(avro.TRANSACTION_SCHEMA, record)
    tx = wire.transaction_from_dict(out)
    assert tx == decode_transaction(orjson.dumps(record))
    assert set(tx.problems) == {"amount: missing", "channel: invalid",
                                "account_age_days: invalid"}


def test_avro_record_without_identity_is_a_decode_error() -> None:
    out = _avro_round_trip(avro.TRANSACTION_SCHEMA, {**GOOD, "transaction_id": ""})
    with pytest.raises(DecodeError, match="transaction_id"):
        wire.transaction_from_dict(out)


def test_avro_score_written_before_a_field_was_added_still_reads() -> None:
    """BACKWARD: today's reader reads a score an older writer (no policy_version) wrote."""
    older = {**avro.SCORE_SCHEMA,
             "fields": [f for f in avro.SCORE_SCHEMA["fields"] if f["name"] != "policy_version"]}
    record = {k: v for k, v in score_to_dict(SCORE).items() if k != "policy_version"}
    out = _avro_round_trip(older, record, reader=avro.SCORE_SCHEMA)
    assert out["policy_version"] is None
    assert wire.score_from_dict(out) == dataclasses.replace(SCORE, policy_version=None)


# ---- Protobuf -------------------------------------------------------------------------

@pytest.mark.parametrize("fdp, fields, message", [
    (protobuf.TRANSACTION_FILE, wire.TRANSACTION_FIELDS, "Transaction"),
    (protobuf.SCORE_FILE, wire.SCORE_FIELDS, "Score"),
])
def test_protobuf_descriptor_matches_the_wire_fields(
        fdp: descriptor_pb2.FileDescriptorProto, fields: tuple[wire.WireField, ...],
        message: str) -> None:
    cls = protobuf.TransactionMessage if message == "Transaction" else protobuf.ScoreMessage
    desc = cls.DESCRIPTOR
    assert desc.full_name == f"rung.v1.{message}"
    assert [(f.name, f.number) for f in desc.fields] == [(f.name, f.number) for f in fields]
    assert [f.name for f in desc.fields] == PINNED_NUMBERS[message]
    # the classes are built from exactly this descriptor (what the registry receives)
    assert descriptor_pb2.FileDescriptorProto.FromString(desc.file.serialized_pb) == fdp


def test_protobuf_optional_fields_keep_their_presence() -> None:
    desc = protobuf.TransactionMessage.DESCRIPTOR
    optional = {f.name for f in wire.TRANSACTION_FIELDS if f.optional}
    assert {f.name for f in desc.fields if f.has_presence} == optional


def test_proto_text_names_every_field_with_its_number() -> None:
    text = protobuf.proto_text(protobuf.SCORE_FILE)
    assert text.startswith('syntax = "proto3";')
    assert "package rung.v1;" in text
    assert "repeated string reasons = 8;" in text
    assert "optional string policy_version = 12;" in text
    assert "double score = 2;" in text
    assert text.count(";\n") - 2 == len(wire.SCORE_FIELDS)  # minus syntax and package


def test_protobuf_transaction_decodes_to_the_same_transaction_as_json() -> None:
    msg = protobuf.dict_to_message(protobuf.TransactionMessage, GOOD)
    parsed = protobuf.TransactionMessage.FromString(msg.SerializeToString())
    assert wire.transaction_from_dict(protobuf.message_to_dict(parsed)) == \
        decode_transaction(orjson.dumps(GOOD))


def test_protobuf_unset_is_missing_and_zero_is_a_value() -> None:
    record = {**GOOD, "amount": 0.0, "is_international": False}
    del record["customer_id"]
    msg = protobuf.dict_to_message(protobuf.TransactionMessage, record)
    out = protobuf.message_to_dict(protobuf.TransactionMessage.FromString(msg.SerializeToString()))
    assert out["amount"] == 0.0 and out["is_international"] is False
    assert out["customer_id"] is None
    tx = wire.transaction_from_dict(out)
    assert tx.problems == ("customer_id: missing",)
    assert tx == decode_transaction(orjson.dumps({**record, "customer_id": None}))


def test_protobuf_score_round_trips() -> None:
    msg = protobuf.dict_to_message(protobuf.ScoreMessage, score_to_dict(SCORE))
    out = protobuf.message_to_dict(protobuf.ScoreMessage.FromString(msg.SerializeToString()))
    assert wire.score_from_dict(out) == SCORE
    bare = dataclasses.replace(SCORE, replay_id=None, policy_version=None)
    msg = protobuf.dict_to_message(protobuf.ScoreMessage, score_to_dict(bare))
    out = protobuf.message_to_dict(protobuf.ScoreMessage.FromString(msg.SerializeToString()))
    assert out["replay_id"] is None and wire.score_from_dict(out) == bare
