"""A worker is warm before it joins: model threads, Redis connections, one fetch; and the
demo summary names the primary share and the top degradation reasons."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import numpy as np
from rich.console import Console

from benchmarks.primary_share import share_report, stage_quantiles
from scorers.config import DEFAULT_BREAKERS, LadderConfig
from scorers.executor import BoundedExecutor
from stream_app.config import Settings
from stream_app.devstack.demo import Outcome, degradation_reasons, render_summary
from stream_app.kafka.readback import Record
from stream_app.kafka.records import HEADER_TIER
from stream_app.wiring import REDIS_WARM_CONNECTIONS, warm_feature_store, warm_transactions
from topics.codec import encode_score
from topics.schemas import Action, Score


def test_warm_starts_every_pool_thread_and_runs_the_function_on_each() -> None:
    ex = BoundedExecutor(threads=3, max_outstanding=3)
    seen: set[int] = set()
    lock = threading.Lock()

    def fn() -> None:
        with lock:
            seen.add(threading.get_ident())

    ex.warm(fn, timeout_s=5.0)
    assert len(seen) == 3
    assert ex.call(lambda: 7, 1.0) == 7  # every slot free again
    ex.close()


class _Conn:
    pass


class _Pool:
    def __init__(self) -> None:
        self.out: list[_Conn] = []
        self.opened = 0

    def get_connection(self) -> _Conn:
        self.opened += 1
        c = _Conn()
        self.out.append(c)
        return c

    def release(self, conn: _Conn) -> None:
        self.out.remove(conn)


class _Client:
    def __init__(self) -> None:
        self.connection_pool = _Pool()
        self.scripts: list[str] = []

    def script_load(self, script: str) -> str:
        self.scripts.append(script)
        return "sha"


class _Store:
    def __init__(self, fail: bool = False) -> None:
        self.fetched: list[int] = []
        self.fail = fail

    def fetch(self, txs: list[Any], timeout_s: float) -> tuple[Any, Any]:
        if self.fail:
            raise ConnectionError("down")
        self.fetched.append(len(txs))
        return np.zeros((len(txs), 14), np.float32), np.ones(len(txs), np.bool_)


def test_warm_feature_store_opens_connections_loads_the_script_and_fetches_once() -> None:
    client, store = _Client(), _Store()
    assert warm_feature_store(client, store)  # type: ignore[arg-type]
    assert client.connection_pool.opened == REDIS_WARM_CONNECTIONS
    assert client.connection_pool.out == []  # all handed back to the pool
    assert len(client.scripts) == 1
    assert store.fetched == [512]


def test_warm_feature_store_failing_never_raises() -> None:
    assert not warm_feature_store(_Client(), _Store(fail=True))  # type: ignore[arg-type]


def test_warm_transactions_are_valid_and_touch_no_real_entity() -> None:
    txs = warm_transactions(8)
    assert all(t.is_complete and t.customer_id and t.customer_id.startswith("rung-warm-")
               for t in txs)
    assert len({t.customer_id for t in txs}) < len(txs)  # customers repeat, as in real batches


def test_budgets_keep_an_injected_50ms_feature_latency_slow() -> None:
    cfg, fs = LadderConfig(), DEFAULT_BREAKERS["feature_store"]
    deadline_s = Settings().batch.deadline_s
    assert cfg.feature_timeout_s < 0.05 and fs.slow_call_duration_s < 0.05
    assert cfg.feature_timeout_s + cfg.fallback_reserve_s < deadline_s
    assert Settings().redis.socket_timeout_s <= cfg.feature_timeout_s


def _score(tid: str, tier: str, reasons: tuple[str, ...]) -> Record:
    s = Score(transaction_id=tid, score=0.1, action=Action.ALLOW, flag_for_review=False,
              tier=tier, model_version="v", confidence=0.9, reasons=reasons, latency_s=0.01,
              scored_at_s=1.0)
    return Record(0, 0, tid.encode(), encode_score(s), {HEADER_TIER: tier.encode()}, 1000)


def test_summary_shows_primary_share_and_top_five_reasons() -> None:
    scores = [_score("a", "primary", ()), _score("b", "fallback", ("primary_timeout",)),
              _score("c", "fallback", ("primary_features_unavailable",)),
              _score("d", "fallback", ("primary_features_unavailable",))]
    reasons = degradation_reasons(scores)
    assert reasons == Counter({"primary_features_unavailable": 2, "primary_timeout": 1})
    out = Outcome(produced=4, broken=0, scores=4, dead=0, review=0, missing=0, duplicates=0,
                  tiers=Counter({"primary": 1, "fallback": 3}),
                  reasons=reasons + Counter({f"r{i}": 1 for i in range(6)}))
    console = Console(record=True, width=120)
    render_summary(console, out)
    text = console.export_text()
    assert "primary share" in text and "25.00%" in text
    assert text.index("primary_features_unavailable") < text.index("primary_timeout")
    assert sum(f"r{i} " in text for i in range(6)) == 3  # top 5 in all


def test_benchmark_share_report_and_histogram_quantiles() -> None:
    scores = [_score("a", "primary", ()), _score("b", "fallback", ("primary_timeout",))]
    rep = share_report(scores, {b"a": 0, b"b": 5000}, first_until_ms=1000)
    assert rep["primary_share"] == 0.5 and rep["first_10s_primary_share"] == 1.0
    assert rep["reasons"] == {"primary_timeout": 1}
    text = "\n".join(f'rung_stage_duration_seconds_bucket{{le="{le}",stage="feature_fetch"}} {n}'
                     for le, n in (("0.005", 990), ("0.01", 999), ("0.02", 1000),
                                   ("+Inf", 1000)))
    q = stage_quantiles(text)["feature_fetch"]
    assert q["batches"] == 1000 and q["p50_le_ms"] == 5.0 and q["p99.9_le_ms"] == 10.0
