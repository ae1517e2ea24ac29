"""The fault switchboard behind `POST|GET|DELETE /admin/faults` (off by default).

A worker started with `RUNG_ADMIN__FAULTS_ENABLED=true` (or `rung run --faults`)
has its dependencies wrapped before its ladder is built (`FaultWrappers`, called by
`stream_app.wiring.build_faulty_scorer`): the primary in a `DeviceFaultyModel`, the
cache and feature store in `FaultyCache` / `FaultyFeatureStore`, and the primary's
weights guarded by a `WeightGuard`. `Switchboard` talks to those switches and reads
the ladder's breaker registry (`scorers.breakers.Breakers`: a snapshot of every
breaker's state); it never touches the ladder or a breaker itself. It maps a JSON body onto the switches:

    {"primary": {"error": true, "latency_s": 0.2, "hang": true, "hang_s": 5,
                 "cuda_error": true, "oom": true, "nan_fraction": 0.5,
                 "corrupt_weights": true},
     "cache": {"down": true, "latency_s": 0.1},
     "feature_store": {"down": true, "latency_s": 0.1}}

A POST changes only the keys it names; a whole body is validated before anything
changes (a bad one changes nothing: `FaultSpecError`). DELETE heals everything:
switches cleared, hung calls released, weights restored. `corrupt_weights` really
flips the in-memory weights and does nothing else: the worker's run-time integrity
checker (`scorers.models.integrity.IntegrityChecker`, every
`RUNG_LADDER__INTEGRITY_CHECK_INTERVAL_S`) finds the mismatch and forces the primary's
breaker open, so the fallback serves; after the weights are restored its next check
resets that breaker.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import structlog

from scorers.breaker import CircuitBreaker
from scorers.breakers import Breakers
from scorers.faults import (
    DependencySwitch,
    DeviceFaultyModel,
    FaultSwitch,
    FaultyCache,
    FaultyFeatureStore,
    WeightGuard,
)
from scorers.models.integrity import INTEGRITY_REASON
from scorers.ports import FeatureStore, Model, PredictionCache

log = structlog.get_logger(__name__)

DEFAULT_HANG_S = 60.0
MAX_WAIT_S = 600.0
__all__ = ["INTEGRITY_REASON", "FaultSpecError", "FaultWrappers", "Switchboard", "parse_faults"]

_PRIMARY_FLOATS = {"hang_s": (0.0, MAX_WAIT_S), "latency_s": (0.0, MAX_WAIT_S),
                   "nan_fraction": (0.0, 1.0)}
_PRIMARY_BOOLS = {"error", "cuda_error", "oom", "hang", "corrupt_weights"}
_DEPENDENCY_FLOATS = {"latency_s": (0.0, MAX_WAIT_S)}
_DEPENDENCY_BOOLS = {"down"}
SECTIONS = ("primary", "cache", "feature_store")


class FaultSpecError(ValueError):
    """The request body does not describe faults this worker can inject."""


def _check_section(name: str, spec: object, floats: Mapping[str, tuple[float, float]],
                   bools: set[str]) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise FaultSpecError(f"{name}: expected a JSON object")
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if key in bools:
            if not isinstance(value, bool):
                raise FaultSpecError(f"{name}.{key}: expected true or false")
        elif key in floats:
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value):
                raise FaultSpecError(f"{name}.{key}: expected a finite number")
            low, high = floats[key]
            if not low <= value <= high:
                raise FaultSpecError(f"{name}.{key}: must be within [{low}, {high}]")
            value = float(value)
        else:
            raise FaultSpecError(f"{name}: unknown fault {key!r}")
        out[str(key)] = value
    return out


def parse_faults(body: object) -> dict[str, dict[str, Any]]:
    """Validate a request body; returns {section: {fault: value}}."""
    if not isinstance(body, Mapping):
        raise FaultSpecError("expected a JSON object with primary / cache / feature_store")
    unknown = sorted(set(body) - set(SECTIONS))
    if unknown:
        raise FaultSpecError(f"unknown section(s) {unknown}: use {list(SECTIONS)}")
    plan: dict[str, dict[str, Any]] = {}
    for name, spec in body.items():
        if name == "primary":
            plan[name] = _check_section(name, spec, _PRIMARY_FLOATS, _PRIMARY_BOOLS)
        else:
            plan[name] = _check_section(name, spec, _DEPENDENCY_FLOATS, _DEPENDENCY_BOOLS)
    return plan


class Switchboard:
    """Maps validated fault requests onto the switches of one ladder."""

    def __init__(self, *, primary: FaultSwitch | None, cache: DependencySwitch | None,
                 feature_store: DependencySwitch | None, guard: WeightGuard | None = None,
                 primary_breaker: CircuitBreaker | None = None,
                 breakers: Mapping[str, CircuitBreaker] | None = None) -> None:
        self.primary, self.cache, self.feature_store = primary, cache, feature_store
        self.guard = guard
        self._primary_breaker = primary_breaker
        self._breakers = dict(breakers or {})
        self._lock = threading.Lock()
        self._corrupted = False

    def apply(self, body: object) -> dict[str, Any]:
        plan = parse_faults(body)
        for name in plan:
            if self._switch(name) is None:
                raise FaultSpecError(f"{name}: not configured in this worker, nothing to break")
        if "corrupt_weights" in plan.get("primary", {}) and self.guard is None:
            raise FaultSpecError("primary.corrupt_weights: the primary has no weights to guard")
        with self._lock:
            for name, changes in plan.items():
                self._apply_section(name, dict(changes))
        log.warning("faults_injected", faults=plan)
        return self.snapshot()

    def _switch(self, name: str) -> FaultSwitch | DependencySwitch | None:
        return {"primary": self.primary, "cache": self.cache,
                "feature_store": self.feature_store}[name]

    def _apply_section(self, name: str, changes: dict[str, Any]) -> None:
        if name != "primary":
            switch = self._switch(name)
            assert isinstance(switch, DependencySwitch)
            switch.set(**changes)
            return
        assert self.primary is not None
        corrupt = changes.pop("corrupt_weights", None)
        hang = changes.pop("hang", None)
        if hang is not None:
            changes.setdefault("hang_s", DEFAULT_HANG_S if hang else 0.0)
        if changes.get("hang_s") == 0.0 or changes.get("latency_s") == 0.0:
            self.primary.release_hangs()
        if changes:
            self.primary.set(**changes)
        if corrupt is True:
            self._corrupt()
        elif corrupt is False:
            self._restore()

    def _corrupt(self) -> None:
        """Only corrupts: detecting it is the integrity checker's job."""
        assert self.guard is not None
        self.guard.corrupt()
        self._corrupted = True

    def _restore(self) -> None:
        if self.guard is None:
            return
        self.guard.restore()
        self._corrupted = False

    def heal(self) -> dict[str, Any]:
        with self._lock:
            for switch in (self.primary, self.cache, self.feature_store):
                if switch is not None:
                    switch.clear()
            if self._corrupted:
                self._restore()
        log.warning("faults_healed")
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.primary is not None:
            primary = asdict(self.primary.current())
            primary["poison_ids"] = sorted(primary["poison_ids"])
            primary["corrupt_weights"] = self._corrupted
            out["primary"] = primary
        for name, switch in (("cache", self.cache), ("feature_store", self.feature_store)):
            if switch is not None:
                out[name] = asdict(switch.current())
        out["breakers"] = {name: _state_name(b) for name, b in self._breakers.items()}
        return out


def _state_name(breaker: CircuitBreaker) -> str:
    return breaker.state.value


class FaultWrappers:
    """Wraps a worker's dependencies in fault switches before its ladder is built
    (`stream_app.wiring` calls `model`, `cache`, `feature_store`), then makes the
    `Switchboard` that talks to those switches and the ladder's breaker registry."""

    def __init__(self, primary: FaultSwitch | None = None) -> None:
        self.primary_switch = primary or FaultSwitch()
        self.primary: Model | None = None
        self.cache_switch: DependencySwitch | None = None
        self.store_switch: DependencySwitch | None = None

    def model(self, model: Model) -> Model:
        wrapped = model if isinstance(model, DeviceFaultyModel) else DeviceFaultyModel(
            model, self.primary_switch)
        self.primary = wrapped
        return wrapped

    def cache(self, cache: PredictionCache) -> PredictionCache:
        self.cache_switch = DependencySwitch("cache")
        return FaultyCache(cache, self.cache_switch)

    def feature_store(self, store: FeatureStore) -> FeatureStore:
        self.store_switch = DependencySwitch("feature_store")
        return FaultyFeatureStore(store, self.store_switch)

    def switchboard(self, breakers: Breakers) -> Switchboard:
        guard = None
        if self.primary is not None:
            try:
                guard = WeightGuard(self.primary)
            except TypeError:
                guard = None
        return Switchboard(primary=self.primary_switch if self.primary is not None else None,
                           cache=self.cache_switch, feature_store=self.store_switch, guard=guard,
                           primary_breaker=breakers.get("primary"),
                           breakers=dict(breakers.items()))
