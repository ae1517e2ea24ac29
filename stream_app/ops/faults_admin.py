"""The fault switchboard behind `POST|GET|DELETE /admin/faults` (off by default).

A worker started with `RUNG_ADMIN__FAULTS_ENABLED=true` (or `rung run --faults`)
wraps its primary in a `DeviceFaultyModel`, its cache and feature store in
`FaultyCache` / `FaultyFeatureStore`, and guards the primary's weights with a
`WeightGuard`. `Switchboard` maps a JSON body onto those switches:

    {"primary": {"error": true, "latency_s": 0.2, "hang": true, "hang_s": 5,
                 "cuda_error": true, "oom": true, "nan_fraction": 0.5,
                 "corrupt_weights": true},
     "cache": {"down": true, "latency_s": 0.1},
     "feature_store": {"down": true, "latency_s": 0.1}}

A POST changes only the keys it names; a whole body is validated before anything
changes (a bad one changes nothing: `FaultSpecError`). DELETE heals everything:
switches cleared, hung calls released, weights restored, a breaker forced open by
the integrity check reset. `corrupt_weights` really flips the in-memory weights;
the run-time integrity check (`WeightGuard.intact`) then fails and forces the
primary's breaker open, so the fallback serves until the weights are restored.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import structlog

from scorers.breaker import CircuitBreaker, State
from scorers.faults import (
    DependencySwitch,
    DeviceFaultyModel,
    FaultSwitch,
    FaultyCache,
    FaultyFeatureStore,
    WeightGuard,
)
from scorers.ladder import Ladder
from scorers.ports import Model

log = structlog.get_logger(__name__)

DEFAULT_HANG_S = 60.0
MAX_WAIT_S = 600.0
INTEGRITY_REASON = "integrity: in-memory weights changed at run time"

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
        assert self.guard is not None
        self.guard.corrupt()
        self._corrupted = True
        self.check_integrity()

    def _restore(self) -> None:
        if self.guard is None:
            return
        self.guard.restore()
        self._corrupted = False
        self.check_integrity()

    def check_integrity(self) -> bool:
        """The run-time integrity check: a failed one forces the primary's breaker open;
        a passing one resets a breaker that this check had forced open."""
        if self.guard is None:
            return True
        intact = self.guard.intact()
        breaker = self._primary_breaker
        if breaker is not None:
            if not intact and breaker.state is not State.FORCED_OPEN:
                breaker.force_open(INTEGRITY_REASON)
                log.error("primary_integrity_failed", reason=INTEGRITY_REASON)
            elif intact and breaker.reason == INTEGRITY_REASON:
                breaker.reset()
                log.info("primary_integrity_restored")
        return intact

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


def primary_wrapper(switch: FaultSwitch) -> Callable[[Model], Model]:
    """For `build_scorer(primary_wrapper=...)`: the primary behind `switch`."""
    return lambda model: DeviceFaultyModel(model, switch)


def install_faults(ladder: Ladder, primary: FaultSwitch | None = None) -> Switchboard:
    """Put fault wrappers around a built ladder's dependencies and return their
    switchboard. The primary is wrapped here unless it already is (`primary_wrapper`)."""
    model = ladder.primary
    if model is not None and not isinstance(model, DeviceFaultyModel):
        primary = primary or FaultSwitch()
        model = ladder.primary = DeviceFaultyModel(model, primary)
    elif isinstance(model, DeviceFaultyModel):
        primary = model.switch
    else:
        primary = None
    cache_switch = store_switch = None
    if ladder.cache is not None:
        cache_switch = DependencySwitch("cache")
        ladder.cache = FaultyCache(ladder.cache, cache_switch)
    if ladder.feature_store is not None:
        store_switch = DependencySwitch("feature_store")
        ladder.feature_store = FaultyFeatureStore(ladder.feature_store, store_switch)
    guard = None
    if model is not None:
        try:
            guard = WeightGuard(model)
        except TypeError:
            guard = None
    return Switchboard(primary=primary, cache=cache_switch, feature_store=store_switch,
                       guard=guard, primary_breaker=ladder.breakers["primary"],
                       breakers=ladder.breakers)
