"""The cache tier: answers a record whose primary input was scored before.

The key is the primary's model version + a hash of its input row (event features
+ online features, after the fetch), so identical inputs share one answer and a
new model version misses by construction. Hits are served fresh or stale (past the
soft TTL: served, and the record queued for re-scoring on the primary and write-
back after the batch, within what is left of the deadline). After a batch, the
primary's answers are written back, at most `max_writes_per_batch` keys. Every
lookup is reported through `on_cache` (hit / miss / stale). Off by default on the
live path and never used in replay mode: see `scorers.cache`.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import numpy as np

from scorers.batch_view import BatchView
from scorers.breakers import Call
from scorers.cache import MIN_CALL_BUDGET_S, input_key
from scorers.config import CacheConfig
from scorers.outcome import Outcomes
from scorers.ports import CachedPrediction, PredictionCache
from scorers.tier import BaseTier, IntArray, TierContext, TierResult
from scorers.tiers.primary import PrimaryTier
from topics.schemas import Tier, Transaction

NAME: Final[str] = Tier.CACHE  # a StrEnum member: a str, `is`-comparable with the enum
REVALIDATE_MAX_BATCH: Final = 256


class CacheTier(BaseTier):
    needs = (NAME,)
    uses_event_rows = True

    def __init__(self, cache: PredictionCache, primary: PrimaryTier, config: CacheConfig,
                 name: str = NAME) -> None:
        self.name = name
        self.cache = cache
        self.primary = primary
        self.config = config
        self.requires = primary.requires
        self.unavailable_reason = primary.unavailable_reason
        self.revalidation_queue: deque[tuple[str, Transaction]] = deque()

    def _call(self, view: BatchView, ctx: TierContext, fn: object) -> Call[object]:
        timeout_s = min(self.config.timeout_s, view.deadline.remaining())
        if timeout_s < MIN_CALL_BUDGET_S:
            return Call(False, None, "no_budget")
        return ctx.breakers.call(self.name, timeout_s, fn)  # type: ignore[arg-type]

    def _keys_for(self, view: BatchView, rows: IntArray) -> tuple[IntArray, list[str]]:
        x, have = view.model_input(rows)
        if x is None:
            return rows[:0], []
        version, prefix = self.primary.version, self.config.key_prefix
        keyed = rows[have]
        return keyed, [input_key(prefix, version, row) for row in x[have]]

    def score(self, view: BatchView, rows: IntArray, ctx: TierContext) -> TierResult:
        if self.unavailable_reason or self.primary.model is None:
            return TierResult()
        if view.deadline.reserve(self.primary.reserve_s).expired():
            return TierResult()  # the primary will say "deadline"
        keyed, keys = self._keys_for(view, rows)
        keys_of = view.scratch[self.name] = dict(zip(keyed.tolist(), keys, strict=True))
        got: list[CachedPrediction | None] | None = None
        if keys:
            cache = self.cache

            def get(timeout_s: float) -> list[CachedPrediction | None]:
                out = cache.get_many(keys, timeout_s)
                if len(out) != len(keys):
                    raise ValueError(f"cache returned {len(out)} entries for {len(keys)} keys")
                return out

            call = self._call(view, ctx, get)
            got = call.value if call.ok else None  # type: ignore[assignment]
        if got is None:
            ctx.listener.on_cache("miss", int(rows.size))
            return TierResult()
        hit = np.array([g is not None and 0.0 <= g.score <= 1.0 for g in got], dtype=np.bool_)
        preds = [g for g in got if g is not None and 0.0 <= g.score <= 1.0]
        hit_idx = keyed[hit] if hit.size else keyed[:0]
        stale = np.array([p.stale for p in preds], dtype=np.bool_)
        for i in hit_idx[stale].tolist():
            self._enqueue(ctx, keys_of[i], view.txs[i])
        n_stale = int(stale.sum())
        ctx.listener.on_cache("hit", int(hit_idx.size) - n_stale)
        ctx.listener.on_cache("stale", n_stale)
        ctx.listener.on_cache("miss", int(rows.size - hit_idx.size))
        if not hit_idx.size:
            return TierResult()
        reasons = [("cache_stale",) if s else ("cache_hit",) for s in stale.tolist()]
        return TierResult(hit_idx, np.array([p.score for p in preds]),
                          np.array([p.confidence for p in preds]), self.primary.version,
                          self.primary.thresholds, reasons=reasons)

    def _enqueue(self, ctx: TierContext, key: str, tx: Transaction) -> None:
        if len(self.revalidation_queue) >= self.config.max_revalidate:
            ctx.listener.on_cache_revalidation_dropped(1)
            return
        self.revalidation_queue.append((key, tx))

    # -- after the answers are fixed -------------------------------------------------------------
    def after(self, view: BatchView, out: Outcomes, ctx: TierContext) -> None:
        keys_of: dict[int, str] = view.scratch.get(self.name, {})  # type: ignore[assignment]
        now = ctx.clock.wall()
        self._write(view, ctx, [(key, CachedPrediction(float(out.score[i]),
                                                       float(out.confidence[i]), now))
                                for i, key in keys_of.items() if out.tier[i] == self.primary.name
                                and out.version[i] == self.primary.version])  # not a canary's
        if self.revalidation_queue:
            self.revalidate(view, ctx)

    def _write(self, view: BatchView, ctx: TierContext,
               items: list[tuple[str, CachedPrediction]]) -> None:
        items = items[:self.config.max_writes_per_batch]
        if items:
            cache = self.cache
            self._call(view, ctx, lambda t: cache.put_many(items, t))

    def revalidate(self, view: BatchView, ctx: TierContext) -> int:
        """Re-score queued stale hits on the primary and write them back under their
        keys, within `view.deadline` less the fallback reserve. Returns how many."""
        if view.deadline.reserve(self.primary.reserve_s).expired():
            return 0
        take = min(REVALIDATE_MAX_BATCH, len(self.revalidation_queue))
        queued = [self.revalidation_queue.popleft() for _ in range(take)]
        batch = BatchView([tx for _, tx in queued], view.deadline, view.features)
        rows = np.flatnonzero(batch.eligible(self.primary.requires) & batch.has_event_rows())
        res = self.primary.score(batch, rows, ctx)
        now = ctx.clock.wall()
        self._write(view, ctx, [(queued[i][0], CachedPrediction(float(s), float(c), now))
                                for i, s, c in zip(res.idx.tolist(), res.scores.tolist(),
                                                   res.confidence.tolist(), strict=True)])
        return int(res.idx.size)
