"""Avro and Protobuf topics through a real schema registry (Apicurio, Confluent API),
the real broker and a real `rung run` worker: events produced in the wire format are
scored, scores read back through the registry, bad records dead-lettered with their
error, and the registry enforces BACKWARD compatibility on rung's subjects."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from stream_app.devstack.process import WorkerProcess
from stream_app.kafka.serde import RegistryFormat, registry_client
from tests.integration.workers import exactly_once_report, simple_events, wait_for_answers
from topics.catalog import TopicNames
from topics.codec import decode_dead_letter
from topics.formats import avro as avro_schemas
from topics.formats import protobuf as proto_schemas
from topics.formats.wire import score_from_dict
from topics.schemas import Score

N_EVENTS = 300


def _read_score(fmt: RegistryFormat, value: bytes, topic: str) -> Score:
    """A consumer's view: decode with confluent-kafka's deserializers only."""
    ctx = SerializationContext(topic, MessageField.VALUE)
    if fmt.kind == "avro":
        obj = AvroDeserializer(fmt.client)(value, ctx)  # the writer schema, from the registry
        assert isinstance(obj, dict)
        return score_from_dict(obj)
    msg = ProtobufDeserializer(proto_schemas.ScoreMessage, {"use.deprecated.format": False})(
        value, ctx)
    return score_from_dict(proto_schemas.message_to_dict(msg))


@pytest.mark.parametrize("kind", ["avro", "protobuf"])
def test_registry_format_round_trip_scores_every_event_and_dead_letters_bad_schemas(
        kind: str, schema_registry: str, kafka_conf: dict[str, Any], redis_url: str,
        prefix: str, topic_names: TopicNames) -> None:
    fmt = RegistryFormat(kind, registry_client(schema_registry, timeout_s=10.0))  # type: ignore[arg-type]
    ids = fmt.register(topic_names)
    tx_subject = f"{topic_names.transactions}-value"
    assert fmt.client.get_compatibility(tx_subject) == "BACKWARD"

    events = list(simple_events(N_EVENTS, prefix=f"{kind}-ok"))
    good = {e.transaction_id.encode(): fmt.encode_transaction(e, topic_names.transactions)
            for e in events}
    header = next(iter(good.values()))[:5]
    assert struct.unpack(">I", header[1:5])[0] == ids[tx_subject]
    bad = {
        b"k-unknown-id": b"\x00" + struct.pack(">I", 987_654) + b"\x00\x0a\x03abc",
        b"k-garbage": header + (b"\x00" if kind == "protobuf" else b"") + b"\xff" * 9,
        b"k-json": json.dumps({"transaction_id": "j-1", "amount": 3.0}).encode(),
    }
    producer = Producer({**kafka_conf, "enable.idempotence": True, "acks": "all"})
    for key, value in [*good.items(), *bad.items()]:
        producer.produce(topic_names.transactions, key=key, value=value)
    assert producer.flush(30) == 0

    worker = WorkerProcess(kafka_conf["bootstrap.servers"], redis_url, prefix, env={
        "RUNG_FORMAT__KIND": kind, "RUNG_FORMAT__REGISTRY_URL": schema_registry})
    try:
        worker.wait_ready(timeout_s=180.0)
        scores, dead = wait_for_answers(kafka_conf, topic_names, N_EVENTS + len(bad),
                                        timeout_s=240.0)
    finally:
        code = worker.terminate()
    assert code == 0, worker.stderr()

    missing, dups = exactly_once_report([*good, *bad], scores, dead)
    assert (missing, dups) == (0, 0)
    assert len(scores) == N_EVENTS and len(dead) == len(bad)

    score_id = ids[f"{topic_names.scores}-value"]
    read = [_read_score(fmt, r.value or b"", topic_names.scores) for r in scores]
    assert all(struct.unpack(">I", (r.value or b"")[1:5])[0] == score_id for r in scores)
    assert sorted(s.transaction_id for s in read) == sorted(e.transaction_id for e in events)
    assert all(0.0 <= s.score <= 1.0 and s.model_version for s in read)

    letters = {dl.original_key: dl for dl in (decode_dead_letter(r.value or b"") for r in dead)}
    assert set(letters) == set(bad)
    for dl_key, dl in letters.items():
        assert dl_key is not None
        assert dl.original_value == bad[dl_key] and dl.source_topic == topic_names.transactions
    assert "unknown schema id 987654" in letters[b"k-unknown-id"].error
    assert f"does not match schema id {ids[tx_subject]}" in letters[b"k-garbage"].error
    assert "not in the schema registry wire format" in letters[b"k-json"].error


def test_registry_enforces_backward_compatibility_on_rung_subjects(
        schema_registry: str, topic_names: TopicNames) -> None:
    client = registry_client(schema_registry, timeout_s=10.0)
    for kind in ("avro", "protobuf"):
        names = TopicNames.with_prefix(f"{topic_names.transactions}-{kind}")
        RegistryFormat(kind, client).register(names)
    subject = f"{topic_names.transactions}-avro.scores-value"
    fields = avro_schemas.SCORE_SCHEMA["fields"]
    added_optional = {**avro_schemas.SCORE_SCHEMA,
                      "fields": [*fields, {"name": "note", "type": ["null", "string"],
                                           "default": None}]}
    added_required = {**avro_schemas.SCORE_SCHEMA,
                      "fields": [*fields, {"name": "note2", "type": "string"}]}
    assert client.register_schema(subject, Schema(json.dumps(added_optional), "AVRO")) > 0
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject, Schema(json.dumps(added_required), "AVRO"))
    assert refused.value.http_status_code == 409

    proto_subject = f"{topic_names.transactions}-protobuf.scores-value"
    text = proto_schemas.proto_text(proto_schemas.SCORE_FILE)
    later = text.replace("}\n", "  optional string note = 13;\n}\n")
    retyped = text.replace("double score = 2;", "string score = 2;")
    assert client.register_schema(proto_subject, Schema(later, "PROTOBUF")) > 0
    with pytest.raises(SchemaRegistryError) as refused_pb:
        client.register_schema(proto_subject, Schema(retyped, "PROTOBUF"))
    assert refused_pb.value.http_status_code == 409
