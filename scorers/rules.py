"""The rules tier: vectorised, explainable, conservative.

Each rule is a boolean column over the batch with a weight; the score is the
noisy-OR of the weights of the rules that fired (1 - prod(1 - w)). A missing
field never fires a rule. Any fired rule flags the record for review; the
thresholds are set so rules alone block only when several strong signals agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from scorers.models.manifest import Thresholds
from topics.schemas import HIGH_RISK_MERCHANT_CATEGORIES, Transaction

RULES_VERSION: Final = "rules-v1"
RULES_THRESHOLDS: Final = Thresholds(review=0.35, block=0.8)
RULES_CONFIDENCE: Final = 0.3  # rules are a coarse guess; below either model by design

HIGH_AMOUNT: Final = 1_000.0
VERY_HIGH_AMOUNT: Final = 5_000.0
NEW_ACCOUNT_DAYS: Final = 30


@dataclass(frozen=True, slots=True)
class RulesResult:
    scores: npt.NDArray[np.float64]
    reasons: tuple[tuple[str, ...], ...]  # "rule:<name>" per fired rule, per record
    fired: npt.NDArray[np.bool_]  # any rule fired


def _columns(txs: Sequence[Transaction]) -> dict[str, npt.NDArray[np.generic]]:
    nan = float("nan")
    return {
        "amount": np.array([nan if t.amount is None else t.amount for t in txs], dtype=np.float64),
        "age": np.array([nan if t.account_age_days is None else t.account_age_days for t in txs],
                        dtype=np.float64),
        "risky_mcc": np.array([t.merchant_category in HIGH_RISK_MERCHANT_CATEGORIES for t in txs],
                              dtype=np.bool_),
        "intl": np.array([t.is_international is True for t in txs], dtype=np.bool_),
        "no_intl_history": np.array([t.has_international_history is False for t in txs],
                                    dtype=np.bool_),
        "remote": np.array([t.channel in ("ecom", "mobile") for t in txs], dtype=np.bool_),
        "atm": np.array([t.channel == "atm" for t in txs], dtype=np.bool_),
    }


def _rules(c: dict[str, npt.NDArray[np.generic]]) -> list[tuple[str, float, npt.NDArray[np.bool_]]]:
    with np.errstate(invalid="ignore"):
        amount = c["amount"].astype(np.float64)
        high = amount >= HIGH_AMOUNT
        very_high = amount >= VERY_HIGH_AMOUNT
        new_account = c["age"].astype(np.float64) < NEW_ACCOUNT_DAYS
    risky, intl = c["risky_mcc"].astype(bool), c["intl"].astype(bool)
    remote, atm = c["remote"].astype(bool), c["atm"].astype(bool)
    return [
        ("high_amount", 0.25, high & ~very_high),
        ("very_high_amount", 0.45, very_high),
        ("new_account", 0.15, new_account),
        ("high_risk_merchant", 0.25, risky),
        ("international_without_history", 0.3, intl & c["no_intl_history"].astype(bool)),
        ("remote_high_risk_merchant", 0.15, remote & risky),
        ("new_account_high_amount", 0.25, new_account & high),
        ("atm_international_new_account", 0.3, atm & intl & new_account),
    ]


def score_rules(txs: Sequence[Transaction]) -> RulesResult:
    n = len(txs)
    rules = _rules(_columns(txs))
    keep = np.ones(n, dtype=np.float64)
    fired_any = np.zeros(n, dtype=np.bool_)
    for _, weight, fired in rules:
        keep *= np.where(fired, 1.0 - weight, 1.0)
        fired_any |= fired
    reasons: list[tuple[str, ...]] = [()] * n
    for i in np.flatnonzero(fired_any).tolist():
        reasons[i] = tuple(f"rule:{name}" for name, _, fired in rules if fired[i])
    return RulesResult(scores=1.0 - keep, reasons=tuple(reasons), fired=fired_any)
