"""`rung evaluate-live`: the per-tier table of `rung evaluate`, from the live topics.

Reads the scores and labels topics back to their end (`read_committed`), keeps the first
live score (no `replay_id`) and the first label per transaction id, joins them, and
computes per answering tier — each record was answered by exactly one tier, so a tier's
row covers the records it answered — AUC ROC, average precision and Card Precision@100
with the offline evaluation's metric functions. Card Precision@100 needs each
transaction's card (customer) and day: they come from the transactions topic when it is
read (`cards=True`); without them that column reads n/a.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import numpy as np

from topics.codec import DecodeError, decode_label, decode_score, decode_transaction
from topics.schemas import Label, Score

T = TypeVar("T")

TOP_K_CARDS: Final = 100
DAY_S: Final = 86_400.0
ALL_TIERS: Final = "all"


@dataclass(frozen=True, slots=True)
class TierRow:
    tier: str
    model_versions: tuple[str, ...]
    labelled: int
    frauds: int
    auc_roc: float
    average_precision: float
    card_precision_at_100: float


@dataclass(frozen=True, slots=True)
class LiveEvaluation:
    rows: tuple[TierRow, ...]
    scores: int  # live scores read (first per transaction id)
    labels: int
    unlabelled_scores: int
    labels_without_score: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Card:
    customer_id: str
    day: int


def _first(values: Iterable[bytes | None], decode: Callable[[bytes | None], T | None],
           key: Callable[[T], str]) -> dict[str, T]:
    """The first decodable value per key; undecodable ones (None from `decode`) skipped."""
    out: dict[str, T] = {}
    for v in values:
        item = decode(v)
        if item is not None:
            out.setdefault(key(item), item)
    return out


def _live_score(v: bytes | None) -> Score | None:
    try:
        s = decode_score(v or b"")
    except (ValueError, KeyError, TypeError):
        return None
    return s if s.replay_id is None else None


def _label(v: bytes | None) -> Label | None:
    try:
        return decode_label(v)
    except DecodeError:
        return None


def _card(v: bytes | None) -> tuple[str, Card] | None:
    try:
        tx = decode_transaction(v)
    except (DecodeError, ValueError):
        return None
    if tx.customer_id is None or tx.event_time_s is None:
        return None
    return tx.transaction_id, Card(tx.customer_id, int(tx.event_time_s // DAY_S))


def first_scores(values: Iterable[bytes | None]) -> dict[str, Score]:
    return _first(values, _live_score, lambda s: s.transaction_id)


def first_labels(values: Iterable[bytes | None]) -> dict[str, Label]:
    return _first(values, _label, lambda lb: lb.transaction_id)


def cards_of(values: Iterable[bytes | None]) -> dict[str, Card]:
    return {tx_id: card for tx_id, card in _first(values, _card, lambda c: c[0]).values()}


def evaluate_live(scores: Mapping[str, Score], labels: Mapping[str, Label],
                  cards: Mapping[str, Card] | None = None,
                  unlabelled_as_genuine: bool = False) -> LiveEvaluation:
    """Join by transaction id and compute one row per tier plus an `all` row."""
    ids = [t for t in scores if t in labels or unlabelled_as_genuine]
    by_tier: dict[str, list[str]] = {}
    for t in ids:
        by_tier.setdefault(str(scores[t].tier), []).append(t)
    rows = [_row(tier, by_tier[tier], scores, labels, cards) for tier in sorted(by_tier)]
    if ids:
        rows.append(_row(ALL_TIERS, ids, scores, labels, cards))
    return LiveEvaluation(
        rows=tuple(rows), scores=len(scores), labels=len(labels),
        unlabelled_scores=sum(1 for t in scores if t not in labels),
        labels_without_score=sum(1 for t in labels if t not in scores),
    )


def _row(tier: str, ids: list[str], scores: Mapping[str, Score], labels: Mapping[str, Label],
         cards: Mapping[str, Card] | None) -> TierRow:
    from scorers.lab.training.metrics import average_precision, card_precision_at_k, roc_auc

    y = np.array([labels[t].is_fraud if t in labels else False for t in ids], dtype=np.float64)
    s = np.array([scores[t].score for t in ids], dtype=np.float64)
    both = 0 < y.sum() < y.shape[0]
    auc = roc_auc(y, s) if both else math.nan
    ap = average_precision(y, s) if y.sum() > 0 else math.nan
    cp = math.nan
    if cards:
        known = [i for i, t in enumerate(ids) if t in cards]
        if known:
            day = np.array([cards[ids[i]].day for i in known])
            card = np.array([cards[ids[i]].customer_id for i in known])
            cp = card_precision_at_k(day, card, y[known], s[known], TOP_K_CARDS)
    versions = tuple(sorted({scores[t].model_version for t in ids}))
    return TierRow(tier, versions, len(ids), int(y.sum()), auc, ap, cp)


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def markdown_table(ev: LiveEvaluation) -> str:
    """The offline table's columns (tier, AUC ROC, AP, Card Precision@100) plus counts."""
    lines = ["| tier | AUC ROC | average precision | Card Precision@100 | labelled | frauds |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.tier} | {_fmt(r.auc_roc)} | {_fmt(r.average_precision)} | "
              f"{_fmt(r.card_precision_at_100)} | {r.labelled} | {r.frauds} |" for r in ev.rows]
    return "\n".join(lines)


def summary(ev: LiveEvaluation) -> dict[str, Any]:
    """The JSON last line: per-tier metrics (NaN as null) and the join's counts."""
    def num(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 6)

    return {
        "tiers": {r.tier: {"auc_roc": num(r.auc_roc), "average_precision":
                           num(r.average_precision), "card_precision_at_100":
                           num(r.card_precision_at_100), "labelled": r.labelled,
                           "frauds": r.frauds, "model_versions": list(r.model_versions)}
                  for r in ev.rows},
        "scores": ev.scores, "labels": ev.labels, "unlabelled_scores": ev.unlabelled_scores,
        "labels_without_score": ev.labels_without_score,
    }
