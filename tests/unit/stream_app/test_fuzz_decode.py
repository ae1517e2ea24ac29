"""Bad-input fuzzing of decode + ladder, no broker: whatever bytes arrive, each record
is either decoded and scored (one finite score, in order; below the primary, with
the reasons) or refused with
a `DecodeError` that says why. `payloads()` is shared with the integration fuzz test."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorers.cache import InMemoryPredictionCache
from scorers.clock import FakeClock
from scorers.config import CacheConfig, LadderConfig
from scorers.deadline import Deadline
from scorers.executor import InlineExecutor
from scorers.feature_store import InMemoryFeatureStore
from scorers.features import EVENT_FEATURE_NAMES, PRIMARY_FEATURE_NAMES, event_features
from scorers.ladder import Ladder
from scorers.models.manifest import Manifest, Thresholds
from scorers.models.nets import build_net
from scorers.models.torch_model import TorchModel
from scorers.standard import standard_ladder
from topics.codec import DecodeError, decode_transaction
from topics.schemas import Tier

FIELDS = ("transaction_id", "event_time_s", "customer_id", "terminal_id", "amount", "currency",
          "merchant_category", "is_international", "has_international_history",
          "account_age_days", "channel")
EXTREME_NUMBERS = (0, -0.0, 5e-324, -5e-324, 1e-300, 1e308, -1e308, 2**63 - 1, -(2**63),
                   2**64 - 1, 1e9, 1e9 + 1, 36_500, 36_501, -1, 946_684_799.9, 4_102_444_800.0)


def _good_value(name: str, i: int) -> Any:
    return {"transaction_id": f"fz-{i}", "event_time_s": 1_750_000_000.0 + i,
            "customer_id": f"c{i % 13}", "terminal_id": f"t{i % 17}", "amount": 12.5 + i,
            "currency": "EUR", "merchant_category": "5411", "is_international": False,
            "has_international_history": True, "account_age_days": 400, "channel": "pos"}[name]


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                      st.floats(allow_nan=True, allow_infinity=True),
                      st.sampled_from(EXTREME_NUMBERS), st.text(max_size=40))
json_value = st.recursive(json_leaf, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)),
    max_leaves=12)


@st.composite
def mutated_event(draw: st.DrawFn, i: int) -> dict[str, Any]:
    """A transaction whose fields are each kept, dropped, or replaced by junk."""
    obj: dict[str, Any] = {}
    for name in FIELDS:
        choice = draw(st.sampled_from(("keep", "keep", "keep", "drop", "junk")))
        if choice == "keep":
            obj[name] = _good_value(name, i)
        elif choice == "junk":
            obj[name] = draw(json_value)
    for _ in range(draw(st.integers(0, 2))):  # extra fields
        obj[draw(st.text(min_size=1, max_size=12))] = draw(json_value)
    return obj


def _nested(depth: int, i: int) -> bytes:
    return (b'{"transaction_id": "fz-%d", "amount": ' % i) + b"[" * depth + b"]" * depth + b"}"


@st.composite
def payload(draw: st.DrawFn, i: int, allow_huge: bool = True) -> bytes | None:
    """One record value: mostly JSON objects with damaged fields, plus every kind of
    bytes a broken producer can send."""
    kind = draw(st.sampled_from(("event", "event", "event", "nan_literal", "raw", "bad_utf8",
                                 "truncated", "not_object", "nested", "null", "huge")))
    if kind == "event":
        return json.dumps(draw(mutated_event(i))).encode()  # big ints and NaN included
    if kind == "nan_literal":  # Python's json writes NaN / Infinity, which JSON forbids
        obj = {**draw(mutated_event(i)), "amount": draw(st.sampled_from(
            (math.nan, math.inf, -math.inf)))}
        return json.dumps(obj).encode()
    if kind == "raw":
        return draw(st.binary(max_size=200))
    if kind == "bad_utf8":
        good = json.dumps({"transaction_id": f"fz-{i}", "customer_id": "c1"}).encode()
        cut = draw(st.integers(1, len(good) - 1))
        return good[:cut] + draw(st.sampled_from((b"\xff", b"\xc3\x28", b"\xed\xa0\x80",
                                                  b"\xf8\x88\x80\x80\x80"))) + good[cut:]
    if kind == "truncated":
        good = json.dumps({f: _good_value(f, i) for f in FIELDS}).encode()
        return good[:draw(st.integers(0, len(good) - 1))]
    if kind == "not_object":
        # stdlib json: json_leaf holds integers past 64 bits, which orjson refuses to write
        return json.dumps(draw(st.one_of(json_leaf, st.lists(json_leaf, max_size=3)))).encode()
    if kind == "nested":
        return _nested(draw(st.sampled_from((10, 200, 1_000, 5_000))), i)
    if kind == "null":
        return None
    size = 1_000_000 if allow_huge else 2_000
    return orjson.dumps({**{f: _good_value(f, i) for f in FIELDS}, "memo": "x" * size})


def tiny_model(name: str, names: tuple[str, ...], seed: int) -> TorchModel:
    torch.manual_seed(seed)
    arch: dict[str, Any] = {"type": "mlp", "n_in": len(names), "hidden": [8]}
    manifest = Manifest(name=name, version=f"{name}-1", weights_file="w.pt", sha256="0" * 64,
                        feature_names=names, arch=arch,
                        thresholds=Thresholds(review=0.5, block=0.9))
    return TorchModel(build_net(arch).eval(), manifest, torch.device("cpu"))


CLOCK = FakeClock()
LADDER: Ladder = standard_ladder(
    LadderConfig(cache=CacheConfig(enabled=True)), primary=tiny_model("primary", PRIMARY_FEATURE_NAMES, 1),
    fallback=tiny_model("fallback", EVENT_FEATURE_NAMES, 2), event_features=event_features,
    cache=InMemoryPredictionCache(CacheConfig(), CLOCK), feature_store=InMemoryFeatureStore(),
    clock=CLOCK, executor=InlineExecutor(CLOCK))


@settings(max_examples=200, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=12).flatmap(
    lambda ids: st.tuples(*[payload(i, allow_huge=False) for i in ids])))
def test_every_payload_is_scored_with_reasons_or_refused_with_an_error(
        values: tuple[bytes | None, ...]) -> None:
    txs, refused = [], 0
    for value in values:
        try:
            txs.append(decode_transaction(value))
        except DecodeError as exc:
            assert str(exc)
            refused += 1
    assert len(txs) + refused == len(values)
    scores = LADDER.score_batch(txs, Deadline(CLOCK, CLOCK.monotonic() + 0.05))
    assert [s.transaction_id for s in scores] == [t.transaction_id for t in txs]
    for tx, s in zip(txs, scores, strict=True):
        assert isinstance(s.tier, Tier) and 0.0 <= s.score <= 1.0 and math.isfinite(s.confidence)
        if s.tier not in (Tier.PRIMARY, Tier.CACHE):  # a degraded answer says why
            assert s.reasons, f"{s.tier} score without reasons"
        if tx.problems:  # a damaged record never reaches the primary
            assert s.tier not in (Tier.PRIMARY, Tier.CACHE)


def test_the_extremes_decode_or_are_refused_never_crash() -> None:
    values: list[bytes | None] = [None, b"", b"\x00", b"null", b"NaN", b"Infinity", b"-Infinity",
                                  b'{"transaction_id": NaN}', _nested(100_000, 1),
                                  b'{"transaction_id": 1e400}', b'{"transaction_id": true}',
                                  b'{"transaction_id": ""}', b'{"transaction_id": "' + b"a" * 129
                                  + b'"}', b'{"transaction_id": 18446744073709551616}']
    for value in values:
        try:
            tx = decode_transaction(value)
        except DecodeError as exc:
            assert str(exc)
            continue
        assert tx.transaction_id and len(tx.transaction_id) <= 128
    ok = decode_transaction(b'{"transaction_id": 7, "amount": 1e308}')
    assert ok.transaction_id == "7" and ok.amount is None and ok.problems
    scores = LADDER.score_batch([ok], Deadline(CLOCK, CLOCK.monotonic() + 0.05))
    assert scores[0].tier not in (Tier.PRIMARY, Tier.CACHE) and np.isfinite(scores[0].score)
