"""Bulkheads for model calls: a fixed pool, a bounded number of outstanding calls.

`BoundedExecutor` runs each call on its own small pool and waits at most the
budget given. A call that overruns keeps its slot until it really returns, so
a hung model can hold at most `max_outstanding` slots; once they are all held,
new calls are rejected at once (`BulkheadFull`) instead of queueing threads.
`warm(fn)` starts every pool thread before the first real call and runs `fn`
once on each (a thread's first torch call is slow).
`InlineExecutor` runs the call in the caller's thread and judges the timeout
on the injected clock afterwards: for fake-clock tests and for in-process
calls that cannot hang.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Protocol, TypeVar

from scorers.clock import Clock

R = TypeVar("R")


class CallTimeout(TimeoutError):
    """The call did not finish within its budget; its result, if any, is discarded."""


class BulkheadFull(RuntimeError):
    """Every slot is held by an outstanding call: rejected fast."""


class Executor(Protocol):
    def call(self, fn: Callable[[], R], timeout_s: float) -> R: ...

    def close(self) -> None: ...


class BoundedExecutor:
    def __init__(self, threads: int = 1, max_outstanding: int = 2, name: str = "primary") -> None:
        if threads < 1 or max_outstanding < threads:
            raise ValueError("need threads >= 1 and max_outstanding >= threads")
        self._threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"rung-{name}")
        self._slots = threading.BoundedSemaphore(max_outstanding)
        self.max_outstanding = max_outstanding

    def call(self, fn: Callable[[], R], timeout_s: float) -> R:
        if timeout_s <= 0:
            raise CallTimeout("no budget left")
        if not self._slots.acquire(blocking=False):
            raise BulkheadFull(f"{self.max_outstanding} calls outstanding")
        try:
            future: Future[R] = self._pool.submit(fn)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _f: self._slots.release())
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            future.cancel()  # frees the slot now if it never started
            raise CallTimeout(f"call exceeded {timeout_s:.4f}s") from None

    def warm(self, fn: Callable[[], object], timeout_s: float = 30.0) -> None:
        """Start all the pool's threads now and run `fn` once on each of them; raise
        what `fn` raised, or `CallTimeout`. Call it before the first real call."""
        barrier = threading.Barrier(self._threads)  # one task per thread, all at once

        def task() -> None:
            barrier.wait(timeout_s)
            fn()

        futures = [self._pool.submit(task) for _ in range(self._threads)]
        try:
            for future in futures:
                future.result(timeout=timeout_s)
        except FutureTimeout:
            barrier.abort()
            raise CallTimeout(f"warm-up exceeded {timeout_s:.1f}s") from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class InlineExecutor:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def call(self, fn: Callable[[], R], timeout_s: float) -> R:
        if timeout_s <= 0:
            raise CallTimeout("no budget left")
        start = self._clock.monotonic()
        result = fn()
        if self._clock.monotonic() - start > timeout_s:
            raise CallTimeout(f"call exceeded {timeout_s:.4f}s")
        return result

    def close(self) -> None:
        return None
