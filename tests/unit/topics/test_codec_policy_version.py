"""`Score.policy_version` on the wire: written when set, absent when None, old records
(without the field) decode to None, a wrong type is refused."""

from __future__ import annotations

import orjson
import pytest

from topics.codec import decode_score, encode_score
from topics.schemas import Action, Score, Tier


def make(policy_version: str | None) -> Score:
    return Score("tx-1", 0.7, Action.REVIEW, True, Tier.PRIMARY, "p-1", 0.4,
                 ("primary_contrib:amount=+1.250",), 0.01, 1_750_000_000.0,
                 policy_version=policy_version)


def test_policy_version_round_trips_and_is_left_out_when_none() -> None:
    s = make("2026-12-01.1")
    assert decode_score(encode_score(s)) == s
    assert orjson.loads(encode_score(s))["policy_version"] == "2026-12-01.1"
    none = make(None)
    assert "policy_version" not in orjson.loads(encode_score(none))
    assert decode_score(encode_score(none)) == none


def test_records_from_before_the_field_decode_with_none() -> None:
    old = orjson.loads(encode_score(make(None)))
    assert decode_score(orjson.dumps(old)).policy_version is None


def test_a_non_string_policy_version_is_refused() -> None:
    data = orjson.loads(encode_score(make("v")))
    data["policy_version"] = 3
    with pytest.raises(ValueError):
        decode_score(orjson.dumps(data))
