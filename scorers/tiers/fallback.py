"""The fallback tier: a light model on the event features only, inline on the
caller's thread (CPU, no pool or lock shared with the primary), under the
`fallback` breaker. Any fault moves its rows to the rules."""

from __future__ import annotations

import math
from typing import Final

import numpy as np

from scorers.batch_view import EVENT_FIELDS, BatchView
from scorers.outcome import model_confidence
from scorers.ports import Model
from scorers.tier import BaseTier, FloatArray, IntArray, TierContext, TierResult
from scorers.tiers.model_run import post_validate
from scorers.tiers.primary import thresholds_of
from topics.schemas import Tier

NAME: Final[str] = Tier.FALLBACK  # a StrEnum member: a str, `is`-comparable with the enum


class FallbackTier(BaseTier):
    needs = (NAME,)
    requires = EVENT_FIELDS
    uses_event_rows = True

    def __init__(self, model: Model | None, *, min_confidence: float | None = None,
                 unavailable_reason: str = "", name: str = NAME) -> None:
        self.name = name
        self.model = model
        self.unavailable_reason = unavailable_reason or ("" if model else "not_configured")
        self.thresholds = thresholds_of(model)
        self.min_confidence = (min_confidence if min_confidence is not None
                               else self.thresholds.min_confidence)

    def score(self, view: BatchView, rows: IntArray, ctx: TierContext) -> TierResult:
        model = self.model
        if model is None or self.unavailable_reason:
            return TierResult.fail(rows, "unavailable")
        x = view.event_rows(rows)

        def predict(_timeout_s: float) -> FloatArray:
            out = np.asarray(model.predict(x), dtype=np.float64)
            if out.shape != (rows.size,):
                raise ValueError(f"fallback returned shape {out.shape}")
            return out

        call = ctx.breakers.call(self.name, math.inf, predict, lambda _p: "success")
        if call.value is None:
            return TierResult.fail(rows, "breaker_open" if call.reason == "breaker_open"
                                   else "exception")
        probs = call.value.astype(np.float64)
        conf = model_confidence(probs)
        ok, bad = post_validate(probs, conf, self.min_confidence)
        return TierResult(rows[ok], probs[ok], conf[ok], model.version, self.thresholds,
                          failed=[(rows[part], reason) for part, reason in bad])
