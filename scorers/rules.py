"""The rules tier: vectorised, explainable, conservative.

Each rule is a boolean column over the batch with a weight; the score is the
noisy-OR of the weights of the rules that fired (1 - prod(1 - w)). A missing
field never fires a rule. Any fired rule flags the record for review; the
thresholds are set so rules alone block only when several strong signals agree.

The rules' parameters (amount limits, the new-account age, the high-risk merchant
categories, each rule's weight, the confidence and the version the scores carry) are
a `RulesParams` value; `DEFAULT_RULES` is today's set, and a policy file
(`scorers.policy`) may replace it at run time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
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
RULE_WEIGHTS: Final[Mapping[str, float]] = MappingProxyType({
    "high_amount": 0.25,
    "very_high_amount": 0.45,
    "new_account": 0.15,
    "high_risk_merchant": 0.25,
    "international_without_history": 0.3,
    "remote_high_risk_merchant": 0.15,
    "new_account_high_amount": 0.25,
    "atm_international_new_account": 0.3,
})
RULE_NAMES: Final = tuple(RULE_WEIGHTS)


@dataclass(frozen=True, slots=True)
class RulesParams:
    """What the rules tier computes with. Weights are by rule name (`RULE_NAMES`);
    a weight of 0 turns a rule off."""

    version: str = RULES_VERSION
    confidence: float = RULES_CONFIDENCE
    high_amount: float = HIGH_AMOUNT
    very_high_amount: float = VERY_HIGH_AMOUNT
    new_account_days: float = NEW_ACCOUNT_DAYS
    high_risk_merchant_categories: frozenset[str] = HIGH_RISK_MERCHANT_CATEGORIES
    weights: Mapping[str, float] = field(default_factory=lambda: RULE_WEIGHTS)

    def __post_init__(self) -> None:
        problems = []
        if set(self.weights) != set(RULE_NAMES):
            problems.append(f"weights must name exactly {sorted(RULE_NAMES)}")
        problems += [f"weight {k}={w} not in [0, 1)" for k, w in self.weights.items()
                     if not 0.0 <= w < 1.0]
        if not 0.0 <= self.confidence <= 1.0:
            problems.append(f"confidence {self.confidence} not in [0, 1]")
        if not 0.0 < self.high_amount <= self.very_high_amount:
            problems.append("need 0 < high_amount <= very_high_amount")
        if self.new_account_days < 0:
            problems.append("new_account_days must be >= 0")
        if not self.version:
            problems.append("version must not be empty")
        if problems:
            raise ValueError("; ".join(problems))


DEFAULT_RULES: Final = RulesParams()


@dataclass(frozen=True, slots=True)
class RulesResult:
    scores: npt.NDArray[np.float64]
    reasons: tuple[tuple[str, ...], ...]  # "rule:<name>" per fired rule, per record
    fired: npt.NDArray[np.bool_]  # any rule fired


def _columns(txs: Sequence[Transaction], p: RulesParams) -> dict[str, npt.NDArray[np.generic]]:
    nan = float("nan")
    risky_mcc = p.high_risk_merchant_categories
    return {
        "amount": np.array([nan if t.amount is None else t.amount for t in txs], dtype=np.float64),
        "age": np.array([nan if t.account_age_days is None else t.account_age_days for t in txs],
                        dtype=np.float64),
        "risky_mcc": np.array([t.merchant_category in risky_mcc for t in txs], dtype=np.bool_),
        "intl": np.array([t.is_international is True for t in txs], dtype=np.bool_),
        "no_intl_history": np.array([t.has_international_history is False for t in txs],
                                    dtype=np.bool_),
        "remote": np.array([t.channel in ("ecom", "mobile") for t in txs], dtype=np.bool_),
        "atm": np.array([t.channel == "atm" for t in txs], dtype=np.bool_),
    }


def _rules(c: dict[str, npt.NDArray[np.generic]],
           p: RulesParams) -> list[tuple[str, float, npt.NDArray[np.bool_]]]:
    with np.errstate(invalid="ignore"):
        amount = c["amount"].astype(np.float64)
        high = amount >= p.high_amount
        very_high = amount >= p.very_high_amount
        new_account = c["age"].astype(np.float64) < p.new_account_days
    risky, intl = c["risky_mcc"].astype(bool), c["intl"].astype(bool)
    remote, atm = c["remote"].astype(bool), c["atm"].astype(bool)
    columns = {
        "high_amount": high & ~very_high,
        "very_high_amount": very_high,
        "new_account": new_account,
        "high_risk_merchant": risky,
        "international_without_history": intl & c["no_intl_history"].astype(bool),
        "remote_high_risk_merchant": remote & risky,
        "new_account_high_amount": new_account & high,
        "atm_international_new_account": atm & intl & new_account,
    }
    return [(name, p.weights[name], columns[name]) for name in RULE_NAMES
            if p.weights[name] > 0.0]


def score_rules(txs: Sequence[Transaction], params: RulesParams = DEFAULT_RULES) -> RulesResult:
    n = len(txs)
    rules = _rules(_columns(txs, params), params)
    keep = np.ones(n, dtype=np.float64)
    fired_any = np.zeros(n, dtype=np.bool_)
    for _, weight, fired in rules:
        keep *= np.where(fired, 1.0 - weight, 1.0)
        fired_any |= fired
    reasons: list[tuple[str, ...]] = [()] * n
    for i in np.flatnonzero(fired_any).tolist():
        reasons[i] = tuple(f"rule:{name}" for name, _, fired in rules if fired[i])
    return RulesResult(scores=1.0 - keep, reasons=tuple(reasons), fired=fired_any)
