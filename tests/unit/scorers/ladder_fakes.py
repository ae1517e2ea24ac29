"""Small fakes for the scoring-core tests: transactions, feature function, feature
store, models, a virtual-time executor and a recording listener. No I/O, no sleeps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scorers.clock import FakeClock
from scorers.config import LadderConfig
from scorers.executor import CallTimeout
from scorers.listeners import LadderListener
from scorers.models.manifest import Manifest, Thresholds, sha256_file, write_manifest
from scorers.models.nets import build_net
from topics.schemas import Transaction

EVENT_NAMES = ("amount", "intl", "risky", "age")
ONLINE_NAMES = ("cust_count", "cust_mean")
PRIMARY_NAMES = EVENT_NAMES + ONLINE_NAMES


def make_tx(i: int, **changes: Any) -> Transaction:
    tx = Transaction(
        transaction_id=f"tx-{i}", event_time_s=1_750_000_000.0 + i, customer_id=f"c{i % 7}",
        terminal_id=f"t{i % 5}", amount=float(10 + i), currency="EUR", merchant_category="5411",
        is_international=False, has_international_history=True, account_age_days=400,
        channel="pos")
    return replace(tx, **changes)


def event_features(txs: Sequence[Transaction]) -> np.ndarray:
    return np.array([[t.amount or 0.0, float(bool(t.is_international)),
                      float(t.merchant_category == "7995"), float(t.account_age_days or 0)]
                     for t in txs], dtype=np.float32).reshape(len(txs), len(EVENT_NAMES))


class FakeStore:
    """Online features: customer count and mean; `missing` customers have none."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock
        self.missing: set[str] = set()
        self.down = False
        self.latency_s = 0.0
        self.updates: list[list[str]] = []
        self.update_fails = False

    def fetch(self, txs: Sequence[Transaction], timeout_s: float) -> tuple[np.ndarray, np.ndarray]:
        if self.clock is not None and self.latency_s:
            self.clock.advance(self.latency_s)
        if self.down:
            raise ConnectionError("feature store down")
        rows = np.array([[3.0, 50.0] for _ in txs], dtype=np.float32).reshape(len(txs), 2)
        have = np.array([t.customer_id not in self.missing for t in txs], dtype=np.bool_)
        return rows, have

    def update(self, txs: Sequence[Transaction], timeout_s: float) -> None:
        if self.update_fails:
            raise ConnectionError("feature store down")
        self.updates.append([t.transaction_id for t in txs])


class FnModel:
    """A Model from a function of the feature matrix; optional virtual latency."""

    def __init__(self, version: str, names: tuple[str, ...],
                 fn: Callable[[np.ndarray], np.ndarray] | None = None,
                 thresholds: Thresholds | None = None,
                 latency: Callable[[float], None] | None = None, latency_s: float = 0.0) -> None:
        self._version, self._names = version, names
        self.fn = fn or (lambda x: 1.0 / (1.0 + np.exp(-(x[:, 0] - 500.0) / 50.0)))
        self.thresholds = thresholds or Thresholds(review=0.5, block=0.9)
        self.latency, self.latency_s = latency, latency_s
        self.calls: list[int] = []

    @property
    def version(self) -> str:
        return self._version

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self._names

    def predict(self, features: np.ndarray) -> np.ndarray:
        self.calls.append(len(features))
        if features.shape[1] != len(self._names):
            raise ValueError("wrong feature count")
        if self.latency is not None and self.latency_s:
            self.latency(self.latency_s)
        return np.asarray(self.fn(features), dtype=np.float32)


class VirtualTimeExecutor:
    """Models `BoundedExecutor` on a FakeClock: the call declares its latency through
    `sleep`; the executor advances the clock by min(latency, timeout) and times out."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self._pending_s = 0.0

    def sleep(self, seconds: float) -> None:
        self._pending_s += seconds

    def call(self, fn: Callable[[], Any], timeout_s: float) -> Any:
        if timeout_s <= 0:
            raise CallTimeout("no budget left")
        self._pending_s = 0.0
        try:
            result = fn()
        finally:
            spent, self._pending_s = self._pending_s, 0.0
        if spent > timeout_s:
            self.clock.advance(timeout_s)
            raise CallTimeout("virtual timeout")
        self.clock.advance(spent)
        return result

    def close(self) -> None:
        return None


class RecordingListener(LadderListener):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_tier_result(self, tier: str, model_version: str, count: int) -> None:
        self.events.append(("tier", tier, model_version, count))

    def on_degraded(self, from_tier: str, reason: str, count: int) -> None:
        self.events.append(("degraded", from_tier, reason, count))

    def on_breaker_transition(self, dependency: str, from_state: str, to_state: str) -> None:
        self.events.append(("breaker", dependency, from_state, to_state))

    def on_cache(self, outcome: str, count: int) -> None:  # type: ignore[override]
        self.events.append(("cache", outcome, count))

    def on_deadline_miss(self, stage: str) -> None:
        self.events.append(("deadline_miss", stage))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind]


def small_config(**changes: Any) -> LadderConfig:
    return replace(LadderConfig(fallback_reserve_s=0.005), **changes)


def write_model_dir(path: Path, names: tuple[str, ...], version: str = "p-1",
                    arch_type: str = "mlp", seed: int = 0) -> Path:
    """A tiny real model directory: build_net + state_dict + manifest with sha256."""
    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    arch: dict[str, Any] = {"type": arch_type, "n_in": len(names)}
    if arch_type == "mlp":
        arch["hidden"] = [8]
    net = build_net(arch)
    torch.save(net.state_dict(), path / "weights.pt")
    write_manifest(path, Manifest(
        name="primary", version=version, weights_file="weights.pt",
        sha256=sha256_file(path / "weights.pt"), feature_names=names, arch=arch,
        thresholds=Thresholds(review=0.5, block=0.9)))
    return path


def primary_model(clock: FakeClock | None = None, executor: VirtualTimeExecutor | None = None,
                  **kw: Any) -> FnModel:
    return FnModel("p-1", PRIMARY_NAMES, latency=executor.sleep if executor else None, **kw)


def fallback_model(**kw: Any) -> FnModel:
    return FnModel("f-1", EVENT_NAMES, **kw)


def build(clock: FakeClock, **kw: Any) -> Any:
    from scorers.standard import standard_ladder

    executor = kw.pop("executor", None) or VirtualTimeExecutor(clock)
    if "primary" not in kw:
        kw["primary"] = primary_model(executor=executor)
    kw.setdefault("fallback", fallback_model())
    kw.setdefault("feature_store", FakeStore(clock))
    return standard_ladder(kw.pop("config", None) or small_config(), event_features=event_features,
                           clock=clock, executor=executor, event_feature_names=EVENT_NAMES,
                           online_feature_names=ONLINE_NAMES, **kw)
