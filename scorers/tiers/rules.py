"""The rules tier: `scorers.rules` over the records with a usable amount. No I/O,
no breaker; cannot fail except by a bug."""

from __future__ import annotations

from typing import Final

import numpy as np

from scorers.batch_view import BatchView
from scorers.rules import RULES_CONFIDENCE, RULES_THRESHOLDS, RULES_VERSION, score_rules
from scorers.tier import BaseTier, IntArray, TierContext, TierResult
from scorers.validation import RULES_FIELDS
from topics.schemas import Tier

NAME: Final[str] = Tier.RULES  # a StrEnum member: a str, `is`-comparable with the enum


class RulesTier(BaseTier):
    name = NAME
    requires = frozenset(RULES_FIELDS)

    def score(self, view: BatchView, rows: IntArray, ctx: TierContext) -> TierResult:
        res = score_rules([view.txs[i] for i in rows.tolist()])
        return TierResult(rows, res.scores, np.full(rows.size, RULES_CONFIDENCE), RULES_VERSION,
                          RULES_THRESHOLDS, flags=res.fired, reasons=res.reasons)
