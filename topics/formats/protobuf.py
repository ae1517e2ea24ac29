"""proto3 messages of the transaction event and the score, from `topics.formats.wire`.

Each message lives in a file of its own (`rung/v1/transaction.proto`, `.../score.proto`)
so its Confluent message index is `[0]`. The descriptor is built here in Python from
the wire fields (no protoc, no generated `_pb2.py`), and `proto_text` renders the same
descriptor as `.proto` source for people and docs. Optional fields use proto3 `optional`
(explicit presence), so an absent field reads as None, never as 0 or "": the same
"missing" the JSON contract reports. Field numbers are positions (`topics.formats.wire`).
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from topics.formats.wire import SCORE_FIELDS, TRANSACTION_FIELDS, WireField

PACKAGE: Final = "rung.v1"

_FDP = descriptor_pb2.FieldDescriptorProto
_PROTO_TYPES: Final[dict[str, tuple[int, str]]] = {
    "string": (_FDP.TYPE_STRING, "string"), "double": (_FDP.TYPE_DOUBLE, "double"),
    "long": (_FDP.TYPE_INT64, "int64"), "boolean": (_FDP.TYPE_BOOL, "bool"),
    "strings": (_FDP.TYPE_STRING, "string"),
}


def file_descriptor(message: str, fields: tuple[WireField, ...]) -> descriptor_pb2.FileDescriptorProto:
    """`rung/v1/<message lowercased>.proto` with the one message `message`."""
    fdp = descriptor_pb2.FileDescriptorProto(name=f"rung/v1/{message.lower()}.proto",
                                             package=PACKAGE, syntax="proto3")
    msg = fdp.message_type.add(name=message)
    for f in fields:
        field = msg.field.add(name=f.name, number=f.number, type=_PROTO_TYPES[f.kind][0],
                              label=_FDP.LABEL_REPEATED if f.kind == "strings"
                              else _FDP.LABEL_OPTIONAL, json_name=f.name)
        if f.optional and f.kind != "strings":
            field.proto3_optional = True
            field.oneof_index = len(msg.oneof_decl)  # the synthetic oneof of proto3 optional
            msg.oneof_decl.add(name=f"_{f.name}")
    return fdp


def proto_text(fdp: descriptor_pb2.FileDescriptorProto) -> str:
    """The `.proto` source of a file built by `file_descriptor`."""
    lines = [f'syntax = "{fdp.syntax}";', "", f"package {fdp.package};", ""]
    by_kind = {t: name for t, name in _PROTO_TYPES.values()}
    for msg in fdp.message_type:
        lines.append(f"message {msg.name} {{")
        for field in msg.field:
            label = ("repeated " if field.label == _FDP.LABEL_REPEATED
                     else "optional " if field.proto3_optional else "")
            lines.append(f"  {label}{by_kind[field.type]} {field.name} = {field.number};")
        lines.append("}")
    return "\n".join(lines) + "\n"


TRANSACTION_FILE: Final = file_descriptor("Transaction", TRANSACTION_FIELDS)
SCORE_FILE: Final = file_descriptor("Score", SCORE_FIELDS)

_pool = descriptor_pool.DescriptorPool()
_pool.Add(TRANSACTION_FILE)
_pool.Add(SCORE_FILE)

TransactionMessage: Final[type[Message]] = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName(f"{PACKAGE}.Transaction"))
ScoreMessage: Final[type[Message]] = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName(f"{PACKAGE}.Score"))


def _plan(fields: tuple[WireField, ...]) -> tuple[tuple[str, bool, bool], ...]:
    return tuple((f.name, f.optional and f.kind != "strings", f.kind == "strings")
                 for f in fields)


_TX_PLAN: Final = _plan(TRANSACTION_FIELDS)
_SCORE_PLAN: Final = _plan(SCORE_FIELDS)


def message_to_dict(msg: Message) -> dict[str, Any]:
    """A Transaction or Score message as the JSON contract's dict: an optional field
    that is not set is None, a repeated one a list."""
    plan = _TX_PLAN if msg.DESCRIPTOR.name == "Transaction" else _SCORE_PLAN
    has = msg.HasField
    out: dict[str, Any] = {}
    for name, optional, repeated in plan:
        if optional and not has(name):
            out[name] = None
        else:
            value = getattr(msg, name)
            out[name] = list(value) if repeated else value
    return out


def dict_to_message(cls: type[Message], obj: dict[str, Any]) -> Message:
    """The JSON contract's dict as a message; None (or absent) leaves a field unset."""
    return cls(**{k: v for k, v in obj.items() if v is not None})
