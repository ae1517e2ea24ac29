"""Per-record pre-validation: which is the highest tier that can still score a record.

Fields each tier needs (any of them missing or invalid sends the record lower):
- primary: every field; `customer_id` and `terminal_id` key the online features.
- fallback: the event fields (`FALLBACK_FIELDS`): the light model sees the event only.
- rules: `amount` (the other rules skip what is missing).
- default: nothing.
`Transaction.problems` (from the lenient decoder) is honoured, and the ranges
are checked again here for records built any other way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from topics.codec import MAX_ACCOUNT_AGE_DAYS, MAX_AMOUNT, MAX_EVENT_TIME_S, MIN_EVENT_TIME_S
from topics.schemas import CHANNELS, Transaction

# Tier levels, best first; a record may be answered by its level or any lower one.
PRIMARY: Final = 0
FALLBACK: Final = 1
RULES: Final = 2
DEFAULT: Final = 3

ONLINE_KEY_FIELDS: Final[tuple[str, ...]] = ("customer_id", "terminal_id")
FALLBACK_FIELDS: Final[tuple[str, ...]] = (
    "event_time_s", "amount", "currency", "merchant_category", "is_international",
    "has_international_history", "account_age_days", "channel",
)
RULES_FIELDS: Final[tuple[str, ...]] = ("amount",)
_CHANNELS: Final = frozenset(CHANNELS)


@dataclass(frozen=True, slots=True)
class Plan:
    """Highest tier level per record and, for records below primary, why."""

    levels: npt.NDArray[np.int8]
    reasons: tuple[tuple[str, ...], ...]


def _field_problems(tx: Transaction) -> dict[str, str]:
    bad: dict[str, str] = {}
    for problem in tx.problems:
        name, _, kind = problem.partition(":")
        bad[name.strip()] = "missing" if kind.strip() == "missing" else "invalid"
    for name in ONLINE_KEY_FIELDS + FALLBACK_FIELDS:
        if getattr(tx, name) is None:
            bad.setdefault(name, "missing")
    amount = tx.amount
    if amount is not None and not (math.isfinite(amount) and 0.0 <= amount <= MAX_AMOUNT):
        bad["amount"] = "invalid"
    when = tx.event_time_s
    if when is not None and not (math.isfinite(when) and MIN_EVENT_TIME_S <= when < MAX_EVENT_TIME_S):
        bad["event_time_s"] = "invalid"
    age = tx.account_age_days
    if age is not None and not 0 <= age <= MAX_ACCOUNT_AGE_DAYS:
        bad["account_age_days"] = "invalid"
    if tx.channel is not None and tx.channel not in _CHANNELS:
        bad["channel"] = "invalid"
    for flag in ("is_international", "has_international_history"):
        value = getattr(tx, flag)
        if value is not None and not isinstance(value, bool):
            bad[flag] = "invalid"
    return bad


def level_for(bad: dict[str, str]) -> int:
    if not bad:
        return PRIMARY
    if any(name in bad for name in RULES_FIELDS):
        return DEFAULT
    if any(name in bad for name in FALLBACK_FIELDS):
        return RULES
    return FALLBACK


def _looks_clean(tx: Transaction) -> bool:
    """Fast path: no problems and every field present and in range."""
    amount, when, age = tx.amount, tx.event_time_s, tx.account_age_days
    return (not tx.problems and tx.customer_id is not None and tx.terminal_id is not None
            and amount is not None and 0.0 <= amount <= MAX_AMOUNT
            and when is not None and MIN_EVENT_TIME_S <= when < MAX_EVENT_TIME_S
            and age is not None and 0 <= age <= MAX_ACCOUNT_AGE_DAYS
            and tx.currency is not None and tx.merchant_category is not None
            and tx.channel in _CHANNELS
            and isinstance(tx.is_international, bool)
            and isinstance(tx.has_international_history, bool))


_NO_REASONS: Final[tuple[str, ...]] = ()


def plan(txs: Sequence[Transaction]) -> Plan:
    levels = np.zeros(len(txs), dtype=np.int8)
    reasons: list[tuple[str, ...]] = [_NO_REASONS] * len(txs)
    for i, tx in enumerate(txs):
        if _looks_clean(tx):
            continue
        bad = _field_problems(tx)
        levels[i] = level_for(bad)
        reasons[i] = tuple(f"invalid_input:{name}_{kind}" for name, kind in sorted(bad.items()))
    return Plan(levels=levels, reasons=tuple(reasons))
