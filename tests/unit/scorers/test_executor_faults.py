"""The bulkhead with a really hung model: the only tests here with real (short) waits,
on Events that the test releases, so nothing is left running."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from ladder_fakes import build, make_tx, primary_model

from scorers.clock import FakeClock, SystemClock
from scorers.deadline import Deadline
from scorers.executor import BoundedExecutor, BulkheadFull, CallTimeout, InlineExecutor
from scorers.faults import CUDA_ERROR_MESSAGE, FaultSwitch, FaultyModel
from topics.schemas import Tier


def test_hung_calls_hold_their_slots_and_new_calls_are_rejected_fast() -> None:
    gate = threading.Event()
    ex = BoundedExecutor(threads=2, max_outstanding=2)
    try:
        for _ in range(2):
            with pytest.raises(CallTimeout):
                ex.call(gate.wait, 0.01)
        with pytest.raises(BulkheadFull):  # both slots held by hung calls: no new thread
            ex.call(lambda: 1, 10.0)
        gate.set()
        answered = False
        for _ in range(200):  # the slots come back as soon as the hung calls return
            try:
                answered = ex.call(lambda: 42, 1.0) == 42
                break
            except BulkheadFull:
                threading.Event().wait(0.005)
        assert answered
    finally:
        gate.set()
        ex.close()


def test_a_call_queued_behind_a_hung_one_times_out_and_frees_its_slot() -> None:
    gate = threading.Event()
    ex = BoundedExecutor(threads=1, max_outstanding=2)
    try:
        with pytest.raises(CallTimeout):
            ex.call(gate.wait, 0.01)
        with pytest.raises(CallTimeout):
            ex.call(lambda: 1, 0.01)  # queued, cancelled on timeout
        with pytest.raises(CallTimeout):
            ex.call(lambda: 1, 0.01)  # so this one is queued again, not rejected
    finally:
        gate.set()
        ex.close()


def test_executor_propagates_errors_and_refuses_without_budget() -> None:
    ex = BoundedExecutor()
    try:
        with pytest.raises(ZeroDivisionError):
            ex.call(lambda: 1 / 0, 1.0)
        with pytest.raises(CallTimeout):
            ex.call(lambda: 1, 0.0)
    finally:
        ex.close()


def test_inline_executor_judges_time_on_the_injected_clock() -> None:
    clock = FakeClock()
    ex = InlineExecutor(clock)
    assert ex.call(lambda: 5, 0.1) == 5

    def slow() -> int:
        clock.advance(0.2)
        return 5

    with pytest.raises(CallTimeout):
        ex.call(slow, 0.1)


def test_ladder_with_a_hung_primary_answers_from_the_fallback_and_stays_bounded() -> None:
    switch = FaultSwitch()
    model = FaultyModel(primary_model(), switch)
    clock = SystemClock()
    ex = BoundedExecutor(threads=1, max_outstanding=1)
    ladder = build(clock, primary=model, executor=ex)  # type: ignore[arg-type]
    try:
        switch.set(hang_s=30.0)
        txs = [make_tx(i) for i in range(8)]
        first = ladder.score_batch(txs, Deadline.after(clock, 0.03))
        assert {s.reasons for s in first} == {("primary_timeout",)}
        second = ladder.score_batch(txs, Deadline.after(clock, 0.03))
        assert {s.reasons for s in second} == {("primary_bulkhead_full",)}
        assert {s.tier for s in first + second} == {Tier.FALLBACK}
        assert threading.active_count() < 20
    finally:
        switch.clear()
        ladder.close()


def test_fault_switch_kinds() -> None:
    switch = FaultSwitch()
    model = FaultyModel(primary_model(), switch)
    x = np.zeros((4, len(model.feature_names)), dtype=np.float32)
    assert not switch.current().active and model.predict(x).shape == (4,)
    switch.set(cuda_error=True)
    with pytest.raises(RuntimeError, match="CUDA error"):
        model.predict(x)
    assert CUDA_ERROR_MESSAGE.startswith("CUDA error")
    switch.clear()
    switch.set(oom=True)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        model.predict(x)
    switch.clear()
    slept: list[float] = []
    slow = FaultyModel(primary_model(), switch, sleep=slept.append)
    switch.set(latency_s=0.5, nan_fraction=1.0)
    assert np.isnan(slow.predict(x)).all() and slept == [0.5]
    assert slow.thresholds.block == 0.9  # inner attributes pass through
