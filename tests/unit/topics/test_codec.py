from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from topics.codec import (
    DecodeError,
    decode_dead_letter,
    decode_score,
    decode_transaction,
    encode_dead_letter,
    encode_score,
    encode_transaction,
)
from topics.schemas import Action, DeadLetter, Score, Tier

GOOD = {
    "transaction_id": "tx-1", "event_time_s": 1_790_000_000.5, "customer_id": "c1",
    "terminal_id": "t9", "amount": 42.5, "currency": "EUR", "merchant_category": "5411",
    "is_international": False, "has_international_history": True, "account_age_days": 400,
    "channel": "pos",
}


def test_good_event_round_trips() -> None:
    tx = decode_transaction(orjson.dumps(GOOD))
    assert tx.is_complete and tx.amount == 42.5 and tx.account_age_days == 400
    assert decode_transaction(encode_transaction(tx)) == tx


@pytest.mark.parametrize("payload, message", [
    (None, "null"),
    (b"\xff\xfe garbage", "not valid JSON"),
    (b'{"transaction_id": "x", "amount": 1', "not valid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"amount": 3}', "transaction_id"),
    (b'{"transaction_id": ""}', "transaction_id"),
    (b'{"transaction_id": true}', "transaction_id"),
])
def test_records_without_identity_are_dead_letters(payload: bytes | None, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_transaction(payload)


@pytest.mark.parametrize("field, value, problem", [
    ("amount", -1, "amount: invalid"),
    ("amount", "12", "amount: invalid"),
    ("amount", None, "amount: missing"),
    ("account_age_days", 1e9, "account_age_days: invalid"),
    ("channel", "telepathy", "channel: invalid"),
    ("is_international", "yes", "is_international: invalid"),
    ("event_time_s", 12, "event_time_s: invalid"),
    ("currency", "EURO", "currency: invalid"),
])
def test_bad_fields_become_problems_not_errors(field: str, value: object, problem: str) -> None:
    data = dict(GOOD)
    if value is None:
        del data[field]
    else:
        data[field] = value
    tx = decode_transaction(orjson.dumps(data))
    assert getattr(tx, field) is None
    assert tx.problems == (problem,)


def test_nan_and_infinity_literals_are_rejected_as_json() -> None:
    with pytest.raises(DecodeError):
        decode_transaction(b'{"transaction_id": "a", "amount": NaN}')


@given(st.binary(max_size=200))
def test_decode_never_raises_anything_but_decode_error(data: bytes) -> None:
    try:
        decode_transaction(data)
    except DecodeError:
        pass


@given(st.dictionaries(st.sampled_from(sorted(GOOD)), st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False), st.text(max_size=5)),
    max_size=11))
def test_any_object_with_an_id_decodes(extra: dict[str, object]) -> None:
    data = {**extra, "transaction_id": "id-1"}
    tx = decode_transaction(orjson.dumps(data))
    assert tx.transaction_id == "id-1"
    if tx.amount is not None:
        assert math.isfinite(tx.amount) and tx.amount >= 0


def test_score_and_dead_letter_round_trip() -> None:
    s = Score("tx", 0.9, Action.REVIEW, True, Tier.FALLBACK, "fb-1", 0.8,
              ("primary_timeout",), 0.01, 1.0, replay_id="r1")
    assert decode_score(encode_score(s)) == s
    dl = DeadLetter("bad", "topic", 3, 99, None, b"\x00\xff")
    back = decode_dead_letter(encode_dead_letter(dl))
    assert (back.original_value, back.original_key, back.error) == (b"\x00\xff", None, "bad")
    assert back.original_value_length == 2 and not back.truncated


def test_a_huge_dead_letter_is_cut_but_still_identified() -> None:
    import hashlib

    from topics.codec import MAX_DEAD_LETTER_BYTES

    big = b"x" * (3 * 1024 * 1024)
    body = encode_dead_letter(DeadLetter("not valid JSON", "t", 0, 1, b"k", big))
    assert len(body) < 1024 * 1024  # fits the broker's default message size
    back = decode_dead_letter(body)
    assert back.truncated and back.original_value == big[:MAX_DEAD_LETTER_BYTES]
    assert back.original_value_length == len(big)
    assert back.original_value_sha256 == hashlib.sha256(big).hexdigest()
    assert back.original_key == b"k"


# ---- labels ----------------------------------------------------------------------------------
def test_label_round_trips_and_knows_fraud() -> None:
    from topics.codec import decode_label, encode_label
    from topics.schemas import Label, LabelKind

    for kind, fraud in ((LabelKind.FRAUD, True), (LabelKind.CHARGEBACK, True),
                        (LabelKind.GENUINE, False)):
        label = Label("tx-1", kind, 1_700_000_100.0, "t7", 1_700_000_000.0)
        back = decode_label(encode_label(label))
        assert back == label and back.is_fraud is fraud
    bare = decode_label(b'{"transaction_id": "tx-2", "kind": "fraud", "labelled_at_s": 1.7e9}')
    assert bare.terminal_id is None and bare.event_time_s is None


def test_unusable_labels_raise_decode_error() -> None:
    import pytest

    from topics.codec import DecodeError, decode_label

    for bad in (b"not json", b"[]", b'{"kind": "fraud", "labelled_at_s": 1.7e9}',
                b'{"transaction_id": "x", "kind": "maybe", "labelled_at_s": 1.7e9}',
                b'{"transaction_id": "x", "kind": "fraud"}', None):
        with pytest.raises(DecodeError):
            decode_label(bad)


def test_fast_path_agrees_with_the_checked_path() -> None:
    """`decode_transaction`'s inline fast path and the field-by-field path give the same
    Transaction for valid events and for every kind of broken field."""
    import itertools

    import orjson

    from topics.codec import _decode_checked, decode_transaction

    base = {"transaction_id": "t-1", "event_time_s": 1.75e9, "customer_id": "C000001",
            "terminal_id": "T000002", "amount": 12.5, "currency": "EUR",
            "merchant_category": "5411", "is_international": False,
            "has_international_history": True, "account_age_days": 40, "channel": "pos"}
    odd: list[object] = [None, True, 1, 7, 2.5, -1, float(10**10), "", "x" * 200, "EUR",
                         "ecom", [1], {"a": 1}, 1e9]
    cases = [dict(base)]
    for field, value in itertools.product(base, odd):
        cases.append({**base, field: value})
    for field in base:
        cases.append({k: v for k, v in base.items() if k != field})
    for obj in cases:
        data = orjson.dumps(obj)
        try:
            fast = decode_transaction(data)
        except ValueError:
            fast = None
        try:
            slow = _decode_checked(orjson.loads(data))
        except ValueError:
            slow = None
        assert fast == slow, obj
