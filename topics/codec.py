"""Byte encodings of rung's topics (JSON via orjson).

`decode_transaction` is lenient about fields and strict about identity: a
record with no usable `transaction_id` cannot be keyed to a score, so it raises
`DecodeError` and goes to the dead-letter topic. Any other field that is
missing, of the wrong type or out of range becomes None and is named in
`Transaction.problems`, so the ladder can still answer it.
"""

from __future__ import annotations

import base64
import hashlib
import math
from typing import Any, Final

import orjson

from topics.schemas import (
    CHANNELS,
    Action,
    DeadLetter,
    Label,
    LabelKind,
    Score,
    Tier,
    Transaction,
)

MAX_ID_CHARS: Final = 128
MAX_AMOUNT: Final = 1e9
MAX_ACCOUNT_AGE_DAYS: Final = 36_500
# Event times outside [2000-01-01, 2100-01-01) are treated as invalid.
MIN_EVENT_TIME_S: Final = 946_684_800.0
MAX_EVENT_TIME_S: Final = 4_102_444_800.0


class DecodeError(ValueError):
    """The bytes cannot become a keyed Transaction; the record is dead-lettered."""


def _id(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS:
        return value
    return None


def _number(value: Any, low: float, high: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    if not math.isfinite(f) or f < low or f > high:
        return None
    return f


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


_CHANNEL_SET: Final = frozenset(CHANNELS)
_loads = orjson.loads


def decode_transaction(data: bytes | None) -> Transaction:
    """Decode one transaction event; raise DecodeError when it has no identity.

    Hot path (once per consumed record): a well-formed event, every field present with
    its exact JSON type and in range, is checked inline and built at once; anything
    else takes the field-by-field path below, which names each problem."""
    if data is None:
        raise DecodeError("empty record: value is null")
    try:
        obj = _loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not valid JSON: {exc}") from None
    if type(obj) is not dict:
        raise DecodeError(f"expected a JSON object, got {type(obj).__name__}")
    try:
        tx_id, et, cu, te = (obj["transaction_id"], obj["event_time_s"], obj["customer_id"],
                             obj["terminal_id"])
        am, cur, mcc, ch = obj["amount"], obj["currency"], obj["merchant_category"], obj["channel"]
        intl, hist, age = (obj["is_international"], obj["has_international_history"],
                           obj["account_age_days"])
    except KeyError:
        return _decode_checked(obj)
    # Exact types: bool is not accepted as a number (type(True) is bool, not int);
    # NaN fails every comparison and orjson never yields inf.
    str_, float_, int_ = str, float, int
    if (type(tx_id) is str_ and 0 < len(tx_id) <= MAX_ID_CHARS
            and ((te_ := type(et)) is float_ or te_ is int_)
            and MIN_EVENT_TIME_S <= et <= MAX_EVENT_TIME_S
            and type(cu) is str_ and 0 < len(cu) <= MAX_ID_CHARS
            and type(te) is str_ and 0 < len(te) <= MAX_ID_CHARS
            and ((ta := type(am)) is float_ or ta is int_) and 0.0 <= am <= MAX_AMOUNT
            and type(cur) is str_ and len(cur) == 3
            and type(mcc) is str_ and 0 < len(mcc) <= 8
            and type(intl) is bool and type(hist) is bool
            and type(age) is int_ and 0 <= age <= MAX_ACCOUNT_AGE_DAYS
            and type(ch) is str_ and ch in _CHANNEL_SET):
        return Transaction(tx_id, et if te_ is float_ else float(et), cu, te,
                           am if ta is float_ else float(am), cur, mcc, intl, hist, age, ch)
    return _decode_checked(obj)


def _decode_checked(obj: dict[str, Any]) -> Transaction:
    """The field-by-field path: each missing or invalid field becomes None and a problem."""
    tx_id = _id(obj.get("transaction_id"))
    if tx_id is None:
        raise DecodeError("missing or invalid transaction_id")

    problems: list[str] = []

    def check(name: str, value: Any, parsed: Any) -> Any:
        if parsed is None:
            problems.append(f"{name}: missing" if value is None else f"{name}: invalid")
        return parsed

    raw = obj.get
    event_time = check("event_time_s", raw("event_time_s"),
                       _number(raw("event_time_s"), MIN_EVENT_TIME_S, MAX_EVENT_TIME_S))
    customer = check("customer_id", raw("customer_id"), _id(raw("customer_id")))
    terminal = check("terminal_id", raw("terminal_id"), _id(raw("terminal_id")))
    amount = check("amount", raw("amount"), _number(raw("amount"), 0.0, MAX_AMOUNT))
    cur = raw("currency")
    currency = check("currency", cur, cur if isinstance(cur, str) and len(cur) == 3 else None)
    mcc = raw("merchant_category")
    merchant = check("merchant_category", mcc,
                     mcc if isinstance(mcc, str) and 0 < len(mcc) <= 8 else None)
    intl = check("is_international", raw("is_international"), _flag(raw("is_international")))
    history = check("has_international_history", raw("has_international_history"),
                    _flag(raw("has_international_history")))
    age = _number(raw("account_age_days"), 0, MAX_ACCOUNT_AGE_DAYS)
    age_days = check("account_age_days", raw("account_age_days"),
                     int(age) if age is not None else None)
    ch = raw("channel")
    channel = check("channel", ch, ch if ch in CHANNELS else None)

    return Transaction(
        transaction_id=tx_id,
        event_time_s=event_time,
        customer_id=customer,
        terminal_id=terminal,
        amount=amount,
        currency=currency,
        merchant_category=merchant,
        is_international=intl,
        has_international_history=history,
        account_age_days=age_days,
        channel=channel,
        problems=tuple(problems),
    )


def transaction_to_dict(tx: Transaction) -> dict[str, Any]:
    return {
        "transaction_id": tx.transaction_id,
        "event_time_s": tx.event_time_s,
        "customer_id": tx.customer_id,
        "terminal_id": tx.terminal_id,
        "amount": tx.amount,
        "currency": tx.currency,
        "merchant_category": tx.merchant_category,
        "is_international": tx.is_international,
        "has_international_history": tx.has_international_history,
        "account_age_days": tx.account_age_days,
        "channel": tx.channel,
    }


def encode_transaction(tx: Transaction) -> bytes:
    return orjson.dumps(transaction_to_dict(tx))


def score_to_dict(score: Score) -> dict[str, Any]:
    out: dict[str, Any] = {
        "transaction_id": score.transaction_id,
        "score": score.score,
        "action": score.action.value,
        "flag_for_review": score.flag_for_review,
        "tier": score.tier,
        "model_version": score.model_version,
        "confidence": score.confidence,
        "reasons": list(score.reasons),
        "latency_s": score.latency_s,
        "scored_at_s": score.scored_at_s,
    }
    if score.replay_id is not None:
        out["replay_id"] = score.replay_id
    if score.policy_version is not None:
        out["policy_version"] = score.policy_version
    return out


def encode_score(score: Score) -> bytes:
    return orjson.dumps(score_to_dict(score))


def tier_name(value: object) -> str:
    """A score's tier: the `Tier` member for a built-in name, else the name as given."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"tier must be a non-empty string, got {value!r}")
    return Tier(value) if value in Tier._value2member_map_ else value


def _optional_str(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"expected a string or null, got {value!r}")


def decode_score(data: bytes) -> Score:
    obj = orjson.loads(data)
    return Score(
        transaction_id=obj["transaction_id"],
        score=float(obj["score"]),
        action=Action(obj["action"]),
        flag_for_review=bool(obj["flag_for_review"]),
        tier=tier_name(obj["tier"]),
        model_version=obj["model_version"],
        confidence=float(obj["confidence"]),
        reasons=tuple(obj["reasons"]),
        latency_s=float(obj["latency_s"]),
        scored_at_s=float(obj["scored_at_s"]),
        replay_id=obj.get("replay_id"),
        policy_version=_optional_str(obj.get("policy_version")),
    )


# Base64 of this many bytes, plus the JSON around it, stays far below the broker's
# default 1 MiB message limit, so a huge bad record can never block its partition.
MAX_DEAD_LETTER_BYTES: Final = 256 * 1024


def _b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode() if data is not None else None


def encode_dead_letter(dl: DeadLetter) -> bytes:
    """The dead-letter body: error, source coordinates, the original key and value."""
    value = dl.original_value
    key = dl.original_key
    return orjson.dumps(
        {
            "error": dl.error,
            "source_topic": dl.source_topic,
            "source_partition": dl.source_partition,
            "source_offset": dl.source_offset,
            "original_key_b64": _b64(key[:MAX_DEAD_LETTER_BYTES] if key is not None else None),
            "original_value_b64": _b64(value[:MAX_DEAD_LETTER_BYTES] if value is not None
                                       else None),
            "original_value_length": len(value) if value is not None else None,
            "original_value_sha256": hashlib.sha256(value).hexdigest() if value is not None
            else None,
            "truncated": value is not None and len(value) > MAX_DEAD_LETTER_BYTES,
        }
    )


def decode_dead_letter(data: bytes) -> DeadLetter:
    obj = orjson.loads(data)
    key = obj.get("original_key_b64")
    value = obj.get("original_value_b64")
    return DeadLetter(
        error=obj["error"],
        source_topic=obj["source_topic"],
        source_partition=int(obj["source_partition"]),
        source_offset=int(obj["source_offset"]),
        original_key=base64.b64decode(key) if key is not None else None,
        original_value=base64.b64decode(value) if value is not None else None,
        original_value_length=obj.get("original_value_length"),
        original_value_sha256=obj.get("original_value_sha256"),
        truncated=bool(obj.get("truncated", False)),
    )


def label_to_dict(label: Label) -> dict[str, Any]:
    out: dict[str, Any] = {"transaction_id": label.transaction_id, "kind": str(label.kind),
                           "labelled_at_s": label.labelled_at_s}
    if label.terminal_id is not None:
        out["terminal_id"] = label.terminal_id
    if label.event_time_s is not None:
        out["event_time_s"] = label.event_time_s
    return out


def encode_label(label: Label) -> bytes:
    return orjson.dumps(label_to_dict(label))


def decode_label(data: bytes | None) -> Label:
    """Strict: a label that cannot be attributed and dated raises `DecodeError`
    (it goes to the dead-letter topic); optional fields out of range become None."""
    try:
        obj = orjson.loads(data) if data is not None else None
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"label is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError("label must be a JSON object")
    tx_id = _id(obj.get("transaction_id"))
    if tx_id is None:
        raise DecodeError("label has no usable transaction_id")
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in LabelKind._value2member_map_:
        raise DecodeError(f"label kind must be one of {[k.value for k in LabelKind]}, "
                          f"got {kind!r}")
    at = _number(obj.get("labelled_at_s"), MIN_EVENT_TIME_S, MAX_EVENT_TIME_S)
    if at is None:
        raise DecodeError("label has no usable labelled_at_s")
    return Label(tx_id, LabelKind(kind), at, _id(obj.get("terminal_id")),
                 _number(obj.get("event_time_s"), MIN_EVENT_TIME_S, MAX_EVENT_TIME_S))
