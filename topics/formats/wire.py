"""The fields that travel, read from the dataclasses in `topics.schemas`.

A field's wire kind follows its type hint: `str` → string, `float` → double, `int` →
long, `bool` → boolean, a `str`-valued Enum (`Action`) → string (its value, as in JSON),
`tuple[str, ...]` → a list of strings; `X | None` makes it optional (null or absent on
the wire). Any other type raises `TypeError`: a new kind of field needs a decision here,
not a silent guess.

Order matters for Protobuf: field numbers are positions in the dataclass (1, 2, ...), so
new fields go at the end (`tests/unit/topics/test_formats.py` pins today's numbers).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, Literal

from topics.codec import _decode_checked, decode_score
from topics.schemas import Score, Transaction

WireKind = Literal["string", "double", "long", "boolean", "strings"]

# Dataclass fields that are derived on decode and never sent.
NOT_ON_THE_WIRE: Final[dict[type, frozenset[str]]] = {
    Transaction: frozenset({"problems"}),
    Score: frozenset(),
}


@dataclass(frozen=True, slots=True)
class WireField:
    name: str
    kind: WireKind
    optional: bool  # may be null or absent
    number: int  # 1-based position among the wire fields (the Protobuf field number)


_SCALARS: Final[dict[type, WireKind]] = {str: "string", float: "double", int: "long",
                                         bool: "boolean"}


def _kind(hint: Any, where: str) -> tuple[WireKind, bool]:
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1 or len(typing.get_args(hint)) != 2:
            raise TypeError(f"{where}: only `X | None` unions can travel, got {hint!r}")
        hint, optional = args[0], True
    if hint in _SCALARS:
        return _SCALARS[hint], optional
    if isinstance(hint, type) and issubclass(hint, Enum) and issubclass(hint, str):
        return "string", optional
    if typing.get_origin(hint) is tuple and typing.get_args(hint) == (str, ...):
        return "strings", optional
    raise TypeError(f"{where}: no wire kind for {hint!r}; extend topics.formats.wire")


def wire_fields(cls: type) -> tuple[WireField, ...]:
    """The fields of `cls` (a dataclass of `topics.schemas`) that travel, in order."""
    hints = typing.get_type_hints(cls)
    skip = NOT_ON_THE_WIRE.get(cls, frozenset())
    out: list[WireField] = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind, optional = _kind(hints[f.name], f"{cls.__name__}.{f.name}")
        out.append(WireField(f.name, kind, optional, len(out) + 1))
    return tuple(out)


TRANSACTION_FIELDS: Final = wire_fields(Transaction)
SCORE_FIELDS: Final = wire_fields(Score)


def transaction_from_dict(obj: dict[str, Any]) -> Transaction:
    """A decoded Avro/Protobuf transaction, checked field by field exactly as JSON is
    (`topics.codec`); raises `DecodeError` when it has no usable `transaction_id`."""
    return _decode_checked(obj)


def score_from_dict(obj: dict[str, Any]) -> Score:
    """A decoded Avro/Protobuf score (read-back path: consumers, tests), through the JSON
    contract's own reader so that both accept and reject the same values."""
    import orjson

    return decode_score(orjson.dumps(obj))
