"""Shadow records: the challenger's answer with the live one, on `<prefix>.scores.shadow`.

A shadow record is the challenger's `Score` as the scores topic encodes it (tier
`shadow`, the challenger's version), plus a `champion` object (the committed live
score's version, tier, score and action), keyed by transaction id, with headers
`rung-tier`, `rung-model-version` (challenger) and `rung-champion-version`. So
`decode_score` reads the challenger's side and `decode_champion` the live one:
`rung replay compare <prefix>.scores <prefix>.scores.shadow` compares live answers with
the challenger's, and `rung replay compare <prefix>.scores.shadow` the two versions
inside the shadow topic (`read_shadow_sides`). Pure, but for the read-back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import orjson

from stream_app.replay.compare import Side, collect
from topics.codec import decode_score, score_to_dict
from topics.schemas import Action, Score

SHADOW_TIER: Final = "shadow"
HEADER_CHAMPION_VERSION: Final = "rung-champion-version"
Record = tuple[bytes, bytes, list[tuple[str, str | bytes | None]]]


def shadow_record(challenger: Score, champion: Score) -> Record:
    body = score_to_dict(challenger)
    body["champion"] = {"model_version": champion.model_version, "tier": champion.tier,
                        "score": champion.score, "action": champion.action.value}
    headers: list[tuple[str, str | bytes | None]] = [
        ("rung-tier", SHADOW_TIER.encode()),
        ("rung-model-version", challenger.model_version.encode()),
        (HEADER_CHAMPION_VERSION, champion.model_version.encode())]
    return challenger.transaction_id.encode(), orjson.dumps(body), headers


def shadow_records(champions: Sequence[Score], scores: Sequence[float],
                   actions: Sequence[Action], confidences: Sequence[float], *, version: str,
                   latency_s: float, scored_at_s: float) -> list[Record]:
    """`shadow_record` for a batch of the challenger's answers (one `version`), without
    building a `Score` per record: the JSON of a template score, per-record fields over it."""
    if not champions:
        return []
    template = score_to_dict(Score("", 0.0, Action.ALLOW, False, SHADOW_TIER, version, 0.0, (),
                                   latency_s, scored_at_s))
    headers: list[tuple[str, str | bytes | None]] = [
        ("rung-tier", SHADOW_TIER.encode()), ("rung-model-version", version.encode())]
    dumps = orjson.dumps
    out: list[Record] = []
    for live, score, action, conf in zip(champions, scores, actions, confidences, strict=True):
        body = dict(template)
        body.update(transaction_id=live.transaction_id, score=score, action=action.value,
                    flag_for_review=action is Action.REVIEW, confidence=conf,
                    champion={"model_version": live.model_version, "tier": live.tier,
                              "score": live.score, "action": live.action.value})
        out.append((live.transaction_id.encode(), dumps(body),
                    [*headers, (HEADER_CHAMPION_VERSION, live.model_version.encode())]))
    return out


def decode_champion(data: bytes) -> Score:
    """The live answer a shadow record carries, as a `Score` (for `rung replay compare`)."""
    obj = orjson.loads(data)
    champ = obj["champion"]
    return Score(transaction_id=obj["transaction_id"], score=float(champ["score"]),
                 action=Action(champ["action"]), flag_for_review=champ["action"] == "review",
                 tier=str(champ["tier"]), model_version=str(champ["model_version"]),
                 confidence=0.0, reasons=(), latency_s=0.0, scored_at_s=0.0)


def read_shadow_sides(client_conf: dict[str, Any], topic: str,
                      timeout_s: float = 120.0) -> tuple[Side, Side]:
    """A shadow topic read to its end: (the live answers, the challenger's), each by
    transaction id, last record of an id wins (at-least-once: duplicates are counted)."""
    from stream_app.kafka.readback import read_topic

    values = [r.value for r in read_topic(client_conf, topic, timeout_s)]
    return (collect(_decoded(values, decode_champion)), collect(_decoded(values, decode_score)))


def _decoded(values: Sequence[bytes | None], decode: Callable[[bytes], Score],
             ) -> list[Score | None]:
    out: list[Score | None] = []
    for value in values:
        try:
            out.append(decode(value) if value else None)
        except (ValueError, KeyError, TypeError):
            out.append(None)
    return out
