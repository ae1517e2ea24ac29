"""Fault injection for the primary model, switchable at run time.

`FaultyModel(inner, switch)` implements `scorers.ports.Model`; with the switch
off (the default) it is a pass-through. Hangs wait on an Event, so
`switch.release_hangs()` (or `clear()`) ends them at once and tests end cleanly.
`sleep` is injectable: pass `FakeClock.advance` to make latency virtual.

Also here: `DeviceFaultyModel` (CUDA error / OOM faults that are real device errors
on a GPU), `WeightGuard` (a real corruption of a model's in-memory weights, which
the run-time integrity checker detects, and its undoing), and `FaultyCache` / `FaultyFeatureStore` (a down or
slow dependency behind a `DependencySwitch`).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import torch

from scorers.models.integrity import module_of
from scorers.ports import (
    BoolVector,
    CachedPrediction,
    FeatureStore,
    FloatMatrix,
    FloatVector,
    Model,
    PredictionCache,
)
from topics.schemas import Transaction

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

F = TypeVar("F", bound="DataclassInstance")
# A recoverable device error (what `raise_device_error("cuda_error")` provokes on a GPU):
# not one that poisons the CUDA context, so the worker keeps running on the fallback.
CUDA_ERROR_MESSAGE = "CUDA error: invalid device ordinal"


@dataclass(frozen=True, slots=True)
class Faults:
    hang_s: float = 0.0  # block this long (interruptible)
    latency_s: float = 0.0  # add this much latency via `sleep`
    error: bool = False  # raise RuntimeError("injected model failure")
    cuda_error: bool = False  # raise a CUDA-style RuntimeError
    oom: bool = False  # raise torch.cuda.OutOfMemoryError
    nan_fraction: float = 0.0  # share of rows returned as NaN
    poison_ids: frozenset[int] = frozenset()  # rows whose first feature equals one of these

    @property
    def active(self) -> bool:
        return self != Faults()


class _Switch(Generic[F]):
    """Thread-safe holder of the current faults of one dependency. Waits are on an Event,
    so `clear()` (or `release_hangs()`) ends them at once."""

    def __init__(self, healthy: F) -> None:
        self._healthy = healthy
        self._lock = threading.Lock()
        self._faults = healthy
        self._release = threading.Event()

    def _rearm(self, faults: F) -> bool:
        """Whether waiting calls should wait again after `set` (re-arm the Event)."""
        return True

    def set(self, **changes: Any) -> None:
        with self._lock:
            self._faults = replace(self._faults, **changes)
            if self._rearm(self._faults):
                self._release.clear()

    def clear(self) -> None:
        with self._lock:
            self._faults = self._healthy
        self._release.set()

    def current(self) -> F:
        with self._lock:
            return self._faults

    def release_hangs(self) -> None:
        self._release.set()

    def wait_hang(self, seconds: float) -> None:
        self._release.wait(seconds)


class FaultSwitch(_Switch[Faults]):
    """The primary model's faults."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(Faults())
        self._rng = np.random.default_rng(seed)

    def _rearm(self, faults: Faults) -> bool:
        # latency waits on the same Event (when no `sleep` is injected): re-arm it,
        # or a latency set after a `clear()` would not wait at all
        return faults.hang_s > 0 or faults.latency_s > 0

    def nan_mask(self, n: int, fraction: float) -> np.ndarray[Any, np.dtype[np.bool_]]:
        with self._lock:
            return self._rng.random(n) < fraction


class FaultyModel:
    def __init__(self, inner: Model, switch: FaultSwitch,
                 sleep: Callable[[float], None] | None = None) -> None:
        self._inner = inner
        self.switch = switch
        self._sleep = sleep

    @property
    def version(self) -> str:
        return self._inner.version

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self._inner.feature_names

    def __getattr__(self, name: str) -> Any:  # thresholds, device, ... of the inner model
        return getattr(self._inner, name)

    def predict(self, features: FloatMatrix) -> FloatVector:
        f = self.switch.current()
        if f.hang_s > 0:
            self.switch.wait_hang(f.hang_s)
        if f.latency_s > 0:
            (self._sleep or self.switch.wait_hang)(f.latency_s)
        if f.oom:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if f.cuda_error:
            raise RuntimeError(CUDA_ERROR_MESSAGE)
        if f.error:
            raise RuntimeError("injected model failure")
        if f.poison_ids and len(features) and np.isin(features[:, 0], list(f.poison_ids)).any():
            raise ValueError("injected poison record")
        out = self._inner.predict(features)
        if f.nan_fraction > 0:
            out = out.copy()
            out[self.switch.nan_mask(len(out), f.nan_fraction)] = np.nan
        return out


# -- real device errors (GPU) ----------------------------------------------------------------------
def raise_device_error(kind: str, device: torch.device | str) -> None:
    """Provoke a real, recoverable device error on a CUDA device: `cuda_error` asks for a
    device ordinal that does not exist, `oom` allocates far more than the card holds.
    Both raise before any kernel runs, so the CUDA context stays usable. On CPU this is a
    no-op and the caller raises the same error type and message itself."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return
    if kind == "cuda_error":
        torch.empty(1, device=torch.device("cuda", torch.cuda.device_count() + 7))
    elif kind == "oom":
        total = torch.cuda.get_device_properties(dev).total_memory
        torch.empty(int(total) * 4, dtype=torch.uint8, device=dev)


class DeviceFaultyModel(FaultyModel):
    """`FaultyModel` whose CUDA error and out-of-memory faults are real on a GPU device
    (the inner model's `device`); on CPU it behaves exactly like `FaultyModel`."""

    def predict(self, features: FloatMatrix) -> FloatVector:
        f = self.switch.current()
        device = getattr(self._inner, "device", "cpu")
        if f.oom:
            raise_device_error("oom", device)
        if f.cuda_error:
            raise_device_error("cuda_error", device)
        return super().predict(features)


# -- corrupted weights -----------------------------------------------------------------------------
def _module_of(model: object) -> torch.nn.Module | None:
    """The torch module behind a model (through `FaultyModel` wrappers), if any."""
    return module_of(model)


class WeightGuard:
    """A real corruption of a model's in-memory weights, and its undoing.

    `corrupt()` flips the sign of every floating-point parameter in place (what the
    run-time integrity checker, `scorers.models.integrity`, must detect); `restore()`
    puts the saved weights back. `intact()` compares a sha256 fingerprint taken when
    healthy (for tests; production checks are the checker's)."""

    def __init__(self, model: object) -> None:
        module = _module_of(model)
        if module is None:
            raise TypeError(f"{type(model).__name__} has no torch module to guard")
        self._module = module
        self._saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self._fingerprint = self.fingerprint()
        self._lock = threading.Lock()

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name, tensor in sorted(self._module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
        return digest.hexdigest()

    def intact(self) -> bool:
        return self.fingerprint() == self._fingerprint

    def corrupt(self) -> None:
        with self._lock, torch.no_grad():
            for tensor in self._module.state_dict().values():
                if tensor.is_floating_point():
                    tensor.neg_()

    def restore(self) -> None:
        with self._lock, torch.no_grad():
            self._module.load_state_dict(self._saved, strict=True)


# -- cache and feature-store faults ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DependencyFaults:
    down: bool = False  # every call raises ConnectionError
    latency_s: float = 0.0  # every call waits this long first; past its timeout it times out

    @property
    def active(self) -> bool:
        return self != DependencyFaults()


class DependencySwitch(_Switch[DependencyFaults]):
    """A dependency's `DependencyFaults`; `sleep` may be injected (a fake clock's `advance`)."""

    def __init__(self, name: str, sleep: Callable[[float], None] | None = None) -> None:
        super().__init__(DependencyFaults())
        self.name = name
        self._sleep = sleep

    def before_call(self, timeout_s: float) -> None:
        """Apply the current faults to one call bounded by `timeout_s`."""
        f = self.current()
        if f.down:
            raise ConnectionError(f"injected fault: {self.name} is down")
        if f.latency_s > 0:
            wait_s = min(f.latency_s, max(timeout_s, 0.0))
            if self._sleep is not None:
                self._sleep(wait_s)
            else:
                self._release.wait(wait_s)
            if f.latency_s > timeout_s:
                raise TimeoutError(f"injected fault: {self.name} slower than {timeout_s:.4f}s")


class FaultyCache:
    """A `PredictionCache` behind a `DependencySwitch`; a pass-through while it is off."""

    def __init__(self, inner: PredictionCache, switch: DependencySwitch) -> None:
        self._inner = inner
        self.switch = switch

    def get_many(self, keys: Sequence[str], timeout_s: float) -> list[CachedPrediction | None]:
        self.switch.before_call(timeout_s)
        return self._inner.get_many(keys, timeout_s)

    def put_many(self, items: Sequence[tuple[str, CachedPrediction]], timeout_s: float) -> None:
        self.switch.before_call(timeout_s)
        self._inner.put_many(items, timeout_s)


class FaultyFeatureStore:
    """A `FeatureStore` behind a `DependencySwitch`; a pass-through while it is off."""

    def __init__(self, inner: FeatureStore, switch: DependencySwitch) -> None:
        self._inner = inner
        self.switch = switch

    def fetch(self, txs: Sequence[Transaction], timeout_s: float) -> tuple[FloatMatrix, BoolVector]:
        self.switch.before_call(timeout_s)
        return self._inner.fetch(txs, timeout_s)

    def update(self, txs: Sequence[Transaction], timeout_s: float) -> None:
        self.switch.before_call(timeout_s)
        self._inner.update(txs, timeout_s)
