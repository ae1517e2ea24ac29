"""Record formats of the transactions and scores topics: JSON, or Avro/Protobuf through a
schema registry (`format.kind`; docs/formats.md).

`RecordFormat` is what the pipeline uses: `decode_transaction(value, topic)` (bytes →
`Transaction`, raising `DecodeError` for a record to dead-letter) and
`encode_score(score, topic)`. `encode_transaction` is for producers (the tests, the
benchmarks). `JSON` is today's codec, function for function, so the default hot path is
unchanged (`stream_app.kafka.records` does not even call through it).

Avro and Protobuf use the Confluent wire format (magic byte 0, the 4-byte schema id,
for Protobuf the message indexes, then the payload), subjects named `<topic>-value` and
confluent-kafka's `schema_registry` client. The schemas come from `topics.formats`
(derived from `topics.schemas`), and a decoded value becomes the JSON contract's dict and
goes through `topics.codec`'s checks: the same lenient fields and strict identity.

Avro: confluent-kafka's `AvroSerializer` writes. Reading resolves each writer's schema
(fetched once per id) to rung's with fastavro, as `AvroDeserializer` does, without its
per-record walk of the whole schema for data-contract tags, which costs more than the
decode itself (`benchmarks/serde.py` measures both ways).

Protobuf framing: confluent-kafka's `ProtobufSerializer` registers a schema as a base64
`FileDescriptorProto`, and reads writer schemas back with `?format=serialized`. Apicurio
(the local stack's registry) stores such a schema but cannot parse it when it checks
the next version's compatibility, so every later version is refused; and it answers
`format=serialized` with `.proto` text. So rung registers its messages as `.proto` text
(`topics.formats.protobuf.proto_text`, the form every Confluent-API registry accepts),
frames the values itself (`RegistryFormat._encode`: five bytes and a zero message index)
and parses with rung's message class (Protobuf reads by field number, so any compatible
writer's bytes parse); the schema id is still checked against the registry, as for Avro.

What a bad record becomes (a `DecodeError`, so a dead letter with this error text):
- not in the wire format (no magic byte, shorter than a header): "not in the schema
  registry wire format: ...";
- a schema id the registry does not have (HTTP 404): "unknown schema id N: ...";
- a schema of the other kind (an Avro id on a Protobuf topic): "schema id N is AVRO ...";
- bytes that do not parse with their writer schema: "value does not match schema id N: ...".
A registry that cannot be reached or answers an error other than "not found" is not the
record's fault: that raises `FatalError` (the batch is not committed; the supervisor
restarts the worker and the records come again), never a dead letter. The client caches
every schema it has fetched, so a running worker needs the registry only for new ids.

Dead letters stay JSON (`topics.codec.encode_dead_letter`) in every format: they carry
bytes that failed to decode, base64, with the error text, they must be writable when
the registry is the thing that failed, and their readers are people and tools.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

from stream_app.kafka.errors import FatalError
from topics.codec import (
    DecodeError,
    decode_transaction,
    encode_score,
    encode_transaction,
    score_to_dict,
    transaction_to_dict,
)
from topics.formats import avro as avro_schemas
from topics.formats.wire import transaction_from_dict
from topics.schemas import Score, Transaction

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from stream_app.config import FormatSettings
    from topics.catalog import TopicNames

FormatKind = Literal["json", "avro", "protobuf"]
COMPATIBILITY = "BACKWARD"
_HEADER = struct.Struct(">bI")  # magic byte, schema id


class RecordFormat(Protocol):
    kind: FormatKind

    def decode_transaction(self, value: bytes | None, topic: str) -> Transaction:
        """Raises `DecodeError` (dead letter) or `FatalError` (registry unreachable)."""
        ...

    def encode_score(self, score: Score, topic: str) -> bytes: ...

    def encode_transaction(self, tx: Transaction, topic: str) -> bytes: ...


class JsonFormat:
    """The JSON codec of `topics.codec`, as it always was."""

    kind: FormatKind = "json"

    def decode_transaction(self, value: bytes | None, topic: str) -> Transaction:
        return decode_transaction(value)

    def encode_score(self, score: Score, topic: str) -> bytes:
        return encode_score(score)

    def encode_transaction(self, tx: Transaction, topic: str) -> bytes:
        return encode_transaction(tx)


JSON = JsonFormat()


def full_score_dict(score: Score) -> dict[str, Any]:
    """`score_to_dict` with every optional field present (None when unset)."""
    return {"replay_id": None, "policy_version": None, **score_to_dict(score)}


class RegistryFormat:
    """Avro or Protobuf values in the Confluent wire format, schemas in a registry."""

    def __init__(self, kind: Literal["avro", "protobuf"], client: SchemaRegistryClient, *,
                 auto_register: bool = True) -> None:
        from confluent_kafka.schema_registry import Schema

        self.kind: FormatKind = kind
        self.client = client
        self._auto_register = auto_register
        self._readers: dict[int, Callable[[memoryview], Any]] = {}  # schema id -> parser
        self._subject_ids: dict[str, int] = {}  # "<topic>-value" -> the id values carry
        # Avro: confluent-kafka's serializers; Protobuf: framed here (module docstring)
        self._serializers: dict[str, Callable[..., bytes | None]] | None = None
        if kind == "avro":
            from confluent_kafka.schema_registry.avro import AvroSerializer

            tx_text = avro_schemas.schema_text(avro_schemas.TRANSACTION_SCHEMA)
            score_text = avro_schemas.schema_text(avro_schemas.SCORE_SCHEMA)
            self._wire_type = "AVRO"
            self.schemas = {"transaction": Schema(tx_text, "AVRO"),
                            "score": Schema(score_text, "AVRO")}
            conf = {"auto.register.schemas": auto_register}
            self._serializers = {
                "transaction": AvroSerializer(client, tx_text,
                                              lambda tx, ctx: transaction_to_dict(tx), conf),
                "score": AvroSerializer(client, score_text,
                                        lambda s, ctx: full_score_dict(s), conf)}
            self._to_dict: Callable[[Any], dict[str, Any]] = dict
        else:
            from topics.formats import protobuf as proto_schemas

            tx_cls, score_cls = proto_schemas.TransactionMessage, proto_schemas.ScoreMessage
            self._wire_type = "PROTOBUF"
            # registered as .proto text (module docstring, "Protobuf framing")
            self.schemas = {
                "transaction": Schema(proto_schemas.proto_text(proto_schemas.TRANSACTION_FILE),
                                      "PROTOBUF"),
                "score": Schema(proto_schemas.proto_text(proto_schemas.SCORE_FILE), "PROTOBUF")}
            self._payloads: dict[str, Callable[[Any], bytes]] = {
                "transaction": lambda tx: bytes(proto_schemas.dict_to_message(
                    tx_cls, transaction_to_dict(tx)).SerializeToString()),
                "score": lambda s: bytes(proto_schemas.dict_to_message(
                    score_cls, score_to_dict(s)).SerializeToString())}
            self._to_dict = proto_schemas.message_to_dict

    def _schema_id(self, topic: str, which: str) -> int:
        """The id values written to `topic` carry: registered (auto_register) or looked up
        under `<topic>-value` once, then kept."""
        subject = f"{topic}-value"
        schema_id = self._subject_ids.get(subject)
        if schema_id is None:
            schema = self.schemas[which]
            schema_id = (int(self.client.register_schema(subject, schema)) if self._auto_register
                         else int(self.client.lookup_schema(subject, schema).schema_id or 0))
            self._subject_ids[subject] = schema_id
        return schema_id

    # ---- registry --------------------------------------------------------------
    def register(self, names: TopicNames) -> dict[str, int]:
        """Set BACKWARD compatibility on rung's subjects and register its schemas there;
        return subject → schema id. Idempotent: the same schema keeps its id."""
        subjects = {f"{names.transactions}-value": self.schemas["transaction"],
                    f"{names.scores}-value": self.schemas["score"],
                    f"{names.review}-value": self.schemas["score"]}
        ids: dict[str, int] = {}
        try:
            for subject, schema in subjects.items():
                self.client.set_compatibility(subject, COMPATIBILITY)
                ids[subject] = int(self.client.register_schema(subject, schema))
        except Exception as exc:  # noqa: BLE001 - any failure here stops the start-up
            raise FatalError(f"could not register rung's {self.kind} schemas: {exc}") from exc
        self._subject_ids.update(ids)
        return ids

    def _reader(self, schema_id: int) -> Callable[[memoryview], Any]:
        """The parser of values written with `schema_id` (made once per id): the writer's
        schema must exist and be of this format's kind."""
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        reader = self._readers.get(schema_id)
        if reader is not None:
            return reader
        try:
            schema = self.client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise DecodeError(f"unknown schema id {schema_id}: the registry has no such "
                                  f"schema ({exc.error_message})") from None
            raise FatalError(f"schema registry error for id {schema_id}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - transport errors: not the record's fault
            raise FatalError(f"schema registry unreachable (id {schema_id}): {exc!r}") from exc
        kind = schema.schema_type or "AVRO"
        if kind != self._wire_type:
            raise DecodeError(f"schema id {schema_id} is {kind}; this topic is read as "
                              f"{self._wire_type}")
        reader = (_avro_reader(schema_id, schema.schema_str or "") if kind == "AVRO"
                  else _protobuf_reader())
        self._readers[schema_id] = reader
        return reader

    # ---- RecordFormat ----------------------------------------------------------
    def decode_transaction(self, value: bytes | None, topic: str) -> Transaction:
        if value is None:
            raise DecodeError("empty record: value is null")
        if len(value) < _HEADER.size or value[0] != 0:
            raise DecodeError(f"not in the schema registry wire format: expected magic byte 0 "
                              f"and a 4-byte schema id, got {value[:_HEADER.size]!r}")
        schema_id = _HEADER.unpack_from(value)[1]
        parse = self._readers.get(schema_id) or self._reader(schema_id)
        try:
            decoded = parse(memoryview(value)[_HEADER.size:])
        except Exception as exc:  # noqa: BLE001 - the parsers raise many types for bad bytes
            raise DecodeError(f"value does not match schema id {schema_id}: "
                              f"{type(exc).__name__}: {exc}") from None
        if decoded is None:
            raise DecodeError(f"value does not match schema id {schema_id}: decoded to null")
        return transaction_from_dict(self._to_dict(decoded))

    def encode_score(self, score: Score, topic: str) -> bytes:
        return self._encode("score", score, topic)

    def encode_transaction(self, tx: Transaction, topic: str) -> bytes:
        return self._encode("transaction", tx, topic)

    def _encode(self, which: str, value: Any, topic: str) -> bytes:
        from confluent_kafka.serialization import MessageField, SerializationContext

        try:
            if self._serializers is not None:
                out = self._serializers[which](value,
                                               SerializationContext(topic, MessageField.VALUE))
                assert out is not None
                return bytes(out)
            schema_id = self._schema_id(topic, which)
        except Exception as exc:  # noqa: BLE001 - registry down, schema not registered, ...
            raise FatalError(f"cannot encode {type(value).__name__} as {self.kind} for "
                             f"{topic}: {exc}") from exc
        # Protobuf: message indexes [0] (one zero byte): the file's only message
        return _HEADER.pack(0, schema_id) + b"\x00" + self._payloads[which](value)


def _avro_reader(schema_id: int, writer_text: str) -> Callable[[memoryview], Any]:
    """fastavro with the writer's schema resolved to rung's (once per id), the same
    resolution confluent-kafka's `AvroDeserializer` does, without its per-record walk of
    the schema for data-contract tags (benchmarks/serde.py measures both)."""
    import io

    import fastavro

    try:
        writer_obj = json.loads(writer_text)
        writer = fastavro.parse_schema(writer_obj)
    except Exception as exc:  # noqa: BLE001 - a schema fastavro cannot read
        raise DecodeError(f"schema id {schema_id} is not a readable Avro schema: {exc}") from None
    own = avro_schemas.TRANSACTION_SCHEMA
    reader = None if writer_obj == own else fastavro.parse_schema(own)
    read, buffer = fastavro.schemaless_reader, io.BytesIO
    return lambda payload: read(buffer(payload), writer, reader)


def _protobuf_reader() -> Callable[[memoryview], Any]:
    """rung's Transaction message parses any compatible writer's bytes (Protobuf reads by
    field number); the message indexes must be [0] (one zero byte): the file's only
    message."""
    from topics.formats.protobuf import TransactionMessage

    parse = TransactionMessage.FromString

    def read(payload: memoryview) -> Any:
        if not payload or payload[0] != 0:
            raise ValueError(f"message indexes {bytes(payload[:4])!r}... are not [0] "
                             "(rung's Transaction is the schema's only message)")
        return parse(bytes(payload[1:]))

    return read


def registry_client(url: str, *, username: str | None = None, password: str | None = None,
                    timeout_s: float = 5.0) -> SchemaRegistryClient:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    conf: dict[str, Any] = {"url": url, "timeout": timeout_s}
    if username is not None:
        conf["basic.auth.user.info"] = f"{username}:{password or ''}"
    return SchemaRegistryClient.new_client(conf)  # "mock://...": confluent-kafka's in-process mock


def build_format(settings: FormatSettings, names: TopicNames | None = None) -> RecordFormat:
    """The configured format; with `auto_register` and `names`, rung's schemas are
    registered (BACKWARD) before the first record."""
    if settings.kind == "json":
        return JSON
    assert settings.registry_url is not None  # FormatSettings checks it
    password = (settings.registry_password.get_secret_value()
                if settings.registry_password is not None else None)
    fmt = RegistryFormat(settings.kind,
                         registry_client(settings.registry_url,
                                         username=settings.registry_username,
                                         password=password,
                                         timeout_s=settings.registry_timeout_s),
                         auto_register=settings.auto_register)
    if settings.auto_register and names is not None:
        fmt.register(names)
    return fmt

