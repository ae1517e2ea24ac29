"""The rules tier: `scorers.rules` over the records with a usable amount, with the
parameters of the batch's policy (`scorers.policy.policy_of`). No I/O, no breaker;
cannot fail except by a bug."""

from __future__ import annotations

from typing import Final

import numpy as np

from scorers.batch_view import BatchView
from scorers.policy import policy_of
from scorers.rules import RULES_THRESHOLDS, score_rules
from scorers.tier import BaseTier, IntArray, TierContext, TierResult
from scorers.validation import RULES_FIELDS
from topics.schemas import Tier

NAME: Final[str] = Tier.RULES  # a StrEnum member: a str, `is`-comparable with the enum


class RulesTier(BaseTier):
    name = NAME
    requires = frozenset(RULES_FIELDS)

    def score(self, view: BatchView, rows: IntArray, ctx: TierContext) -> TierResult:
        params = policy_of(view).rules
        res = score_rules([view.txs[i] for i in rows.tolist()], params)
        return TierResult(rows, res.scores, np.full(rows.size, params.confidence), params.version,
                          RULES_THRESHOLDS, flags=res.fired, reasons=res.reasons)
