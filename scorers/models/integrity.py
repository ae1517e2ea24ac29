"""Run-time integrity of the models' in-memory weights.

At load, right after the manifest's sha256 of the weights file is verified,
`TorchModel.load` takes `weights_checksum` of the parameters and buffers in memory.
`IntegrityChecker` recomputes it on a timer, on its own daemon thread (never on
the scoring thread), and compares: a mismatch forces the tier's breaker open with
`INTEGRITY_REASON`, logs `model_integrity_failed` and calls `on_failure(tier)` (the
worker counts `rung_model_integrity_failures_total{tier}`); a later intact check
(weights restored) resets a breaker that this check had forced open, and nothing
else. The clock is injected: tests drive `run_pending()` on a fake clock.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import torch

from scorers.breaker import CircuitBreaker, State
from scorers.clock import Clock

_log = logging.getLogger(__name__)
INTEGRITY_REASON: Final = "integrity: in-memory weights changed at run time"


def module_of(model: object) -> torch.nn.Module | None:
    """The torch module behind a model (through wrappers exposing `_inner`), if any."""
    for _ in range(8):
        net = getattr(model, "_net", None)
        if isinstance(net, torch.nn.Module):
            return net
        inner = getattr(model, "_inner", None)
        if inner is None:
            return None
        model = inner
    return None


def weights_checksum(module: torch.nn.Module) -> int:
    """CRC-32 of every parameter and buffer's bytes, by name (a device tensor is copied
    to the host: a few hundred KB for rung's nets)."""
    crc = 0
    for name, tensor in sorted(module.state_dict().items()):
        crc = zlib.crc32(name.encode(), crc)
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        crc = zlib.crc32(flat.view(torch.uint8).numpy() if flat.numel() else b"", crc)
    return crc


@dataclass(slots=True)
class Target:
    tier: str
    module: torch.nn.Module
    baseline: int
    breaker: CircuitBreaker


def target_of(tier: str, model: object, breaker: CircuitBreaker) -> Target | None:
    """A model's checking target: its load-time checksum (`weights_checksum` attribute,
    through wrappers) or, lacking one, the checksum now. None without a torch module."""
    module = module_of(model)
    if module is None:
        return None
    baseline = getattr(model, "weights_checksum", None)
    if not isinstance(baseline, int):
        baseline = weights_checksum(module)
    return Target(tier, module, baseline, breaker)


class IntegrityChecker:
    def __init__(self, targets: Sequence[Target], interval_s: float, clock: Clock,
                 on_failure: Callable[[str], None] | None = None) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.targets = list(targets)
        self.interval_s = interval_s
        self._clock = clock
        self._on_failure = on_failure
        self._next_due = clock.monotonic() + interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.checks = 0
        self.failures: dict[str, int] = {t.tier: 0 for t in self.targets}

    # -- one check -------------------------------------------------------------------------------
    def check_now(self) -> dict[str, bool | None]:
        """Check every target once; {tier: intact} (None: the checksum could not be taken)."""
        self.checks += 1
        return {t.tier: self._check(t) for t in self.targets}

    def _check(self, target: Target) -> bool | None:
        try:
            intact = weights_checksum(target.module) == target.baseline
        except Exception as exc:  # noqa: BLE001 - e.g. a lost CUDA context: not a verdict
            _log.warning("model_integrity_check_error tier=%s error=%s", target.tier, exc)
            return None
        breaker = target.breaker
        if not intact:
            self.failures[target.tier] += 1
            _log.error("model_integrity_failed tier=%s reason=%s", target.tier, INTEGRITY_REASON)
            if self._on_failure is not None:
                try:
                    self._on_failure(target.tier)
                except Exception:  # noqa: BLE001 - a metric must not stop the checks
                    _log.warning("integrity on_failure hook failed", exc_info=True)
            if breaker.state is not State.FORCED_OPEN:
                breaker.force_open(INTEGRITY_REASON)
        elif breaker.state is State.FORCED_OPEN and breaker.reason == INTEGRITY_REASON:
            breaker.reset()
            _log.warning("model_integrity_restored tier=%s", target.tier)
        return intact

    def run_pending(self) -> bool:
        """Check if the interval has passed since the last check; True if it checked."""
        now = self._clock.monotonic()
        if now < self._next_due:
            return False
        self.check_now()
        self._next_due = now + self.interval_s
        return True

    # -- the background thread -------------------------------------------------------------------
    def start(self) -> IntegrityChecker:
        if self._thread is None and self.targets:
            self._thread = threading.Thread(target=self._loop, name="rung-integrity", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(max(0.0, self._next_due - self._clock.monotonic())):
            try:
                self.run_pending()
            except Exception:  # noqa: BLE001 - the checker thread never dies of a bug
                _log.exception("model_integrity_checker_error")
                self._next_due = self._clock.monotonic() + self.interval_s

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
