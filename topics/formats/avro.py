"""Avro record schemas of the transaction event and the score, from `topics.formats.wire`.

Optional fields are `["null", T]` unions with a null default, so a reader of a later
version still reads records written before a field was added (BACKWARD compatibility,
which rung asks the registry to enforce), and a Transaction producer may leave out what
it does not know: the ladder answers such a record from the tiers that still can, as it
does for JSON. `transaction_id` and every non-optional Score field are required.
"""

from __future__ import annotations

import json
from typing import Any, Final

from topics.formats.wire import SCORE_FIELDS, TRANSACTION_FIELDS, WireField

NAMESPACE: Final = "io.rung.topics.v1"

_AVRO_TYPES: Final[dict[str, Any]] = {
    "string": "string", "double": "double", "long": "long", "boolean": "boolean",
    "strings": {"type": "array", "items": "string"},
}


def _field(f: WireField) -> dict[str, Any]:
    avro_type = _AVRO_TYPES[f.kind]
    if f.optional:
        return {"name": f.name, "type": ["null", avro_type], "default": None}
    return {"name": f.name, "type": avro_type}


def record_schema(name: str, fields: tuple[WireField, ...], doc: str) -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": NAMESPACE, "doc": doc,
            "fields": [_field(f) for f in fields]}


TRANSACTION_SCHEMA: Final = record_schema(
    "Transaction", TRANSACTION_FIELDS, "A card transaction event (rung's input).")
SCORE_SCHEMA: Final = record_schema(
    "Score", SCORE_FIELDS, "One answer for one transaction (rung's output).")


def schema_text(schema: dict[str, Any]) -> str:
    """The schema as registered: compact, keys in the order written."""
    return json.dumps(schema, separators=(",", ":"))
