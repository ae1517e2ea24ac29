"""Calls to a dependency under its circuit breaker and a timeout.

The ladder reads its dependencies (`ladder.cache`, `ladder.feature_store`) at call
time, so an operator or a fault-injection wrapper may swap them while it runs;
these helpers take the dependency as an argument for the same reason. A call that
returns after its timeout is reported to the breaker as a failure (slow and late).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from scorers.breaker import CircuitBreaker
from scorers.clock import Clock
from scorers.listeners import LadderListener
from scorers.ports import BoolVector, FeatureStore, FloatMatrix
from topics.schemas import Transaction

R = TypeVar("R")


def guarded_call(breaker: CircuitBreaker, clock: Clock, timeout_s: float,
                 call: Callable[[float], R]) -> R | None:
    """`call(timeout_s)` if the breaker permits; None when refused or failed."""
    if timeout_s <= 0 or not breaker.acquire():
        return None
    t0 = clock.monotonic()
    try:
        result = call(timeout_s)
    except Exception:  # noqa: BLE001 - a dependency fault is reported, never raised
        breaker.on_failure(clock.monotonic() - t0)
        return None
    elapsed = clock.monotonic() - t0
    (breaker.on_failure if elapsed > timeout_s else breaker.on_success)(elapsed)
    return result


def guarded_fetch(store: FeatureStore, breaker: CircuitBreaker, clock: Clock,
                  txs: Sequence[Transaction], timeout_s: float, n_online: int,
                  listener: LadderListener) -> tuple[FloatMatrix | None, BoolVector]:
    """Online features for `txs`, or (None, all False) when the store is down, slow,
    refused by its breaker, or answers with the wrong shape."""
    nothing = np.zeros(len(txs), dtype=np.bool_)
    if timeout_s <= 0 or not breaker.acquire():
        return None, nothing
    t0 = clock.monotonic()
    try:
        online_raw, have_raw = store.fetch(txs, timeout_s)
        online = np.asarray(online_raw, dtype=np.float32)
        have = np.asarray(have_raw, dtype=np.bool_)
        if online.shape != (len(txs), n_online) or have.shape != (len(txs),):
            raise ValueError(f"feature store returned {online.shape}, {have.shape}")
    except Exception:  # noqa: BLE001 - a store fault sends the rows to the fallback
        breaker.on_failure(clock.monotonic() - t0)
        return None, nothing
    elapsed = clock.monotonic() - t0
    listener.on_stage_duration("features", elapsed)
    if elapsed > timeout_s:
        breaker.on_failure(elapsed)
        return None, nothing
    breaker.on_success(elapsed)
    return online, have


def guarded_update(store: FeatureStore, breaker: CircuitBreaker, clock: Clock,
                   txs: Sequence[Transaction], timeout_s: float) -> None:
    """Fold scored events into the store; a failure here never reaches the caller."""
    guarded_call(breaker, clock, timeout_s, lambda t: store.update(txs, t))
