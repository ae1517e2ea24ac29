"""Per-record pre-validation: which fields of each record are missing or invalid.

`plan(txs)` names each record's bad fields; a tier declares the fields it requires
(`Tier.requires`, None = every field) and a record is eligible for that tier when
none of them is bad. The built-in tiers need:
- primary (and the cache, keyed on the primary's input): every field;
  `customer_id` and `terminal_id` key the online features.
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

ONLINE_KEY_FIELDS: Final[tuple[str, ...]] = ("customer_id", "terminal_id")
FALLBACK_FIELDS: Final[tuple[str, ...]] = (
    "event_time_s", "amount", "currency", "merchant_category", "is_international",
    "has_international_history", "account_age_days", "channel",
)
RULES_FIELDS: Final[tuple[str, ...]] = ("amount",)
_CHANNELS: Final = frozenset(CHANNELS)


@dataclass(frozen=True, slots=True)
class Plan:
    """The records with a bad field (`dirty`, ascending), their bad field names, and
    the `invalid_input:<field>_<kind>` reasons for each of them."""

    n: int
    dirty: npt.NDArray[np.intp]
    bad: tuple[frozenset[str], ...]  # per dirty record
    reasons: tuple[tuple[str, ...], ...]  # per dirty record

    def eligible(self, requires: frozenset[str] | None) -> npt.NDArray[np.bool_]:
        """Mask of records none of whose `requires` fields is bad (None: every field)."""
        mask = np.ones(self.n, dtype=np.bool_)
        if requires is None:
            mask[self.dirty] = False
            return mask
        for i, bad in zip(self.dirty.tolist(), self.bad, strict=True):
            if not bad.isdisjoint(requires):
                mask[i] = False
        return mask


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


def plan(txs: Sequence[Transaction]) -> Plan:
    dirty: list[int] = []
    bads: list[frozenset[str]] = []
    reasons: list[tuple[str, ...]] = []
    for i, tx in enumerate(txs):
        if _looks_clean(tx):
            continue
        bad = _field_problems(tx)
        if not bad:
            continue
        dirty.append(i)
        bads.append(frozenset(bad))
        reasons.append(tuple(f"invalid_input:{name}_{kind}" for name, kind in sorted(bad.items())))
    return Plan(len(txs), np.array(dirty, dtype=np.intp), tuple(bads), tuple(reasons))
