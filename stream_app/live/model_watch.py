"""Hot model reload and the canary, for a worker whose primary comes from a model registry.

`build_model_switch` (called by `stream_app.wiring.build_scorer` when
`RUNG_MODELS__REGISTRY_DIR` is set) loads the registry's promoted champion (and canary)
before the ladder is built: load, verify the sha256, warm up. A promoted champion
that fails is refused (logged, counted) and the newest previous champion that loads
serves instead, so a broken promotion never leaves a restarted worker without its
primary. It returns the primary tier's `ModelSwitch` and a `ModelWatch`.

`ModelWatch` has two halves:
- its own daemon thread (`start`) reads `promoted.json` every `poll_s`. When the
  pointer's generation changed and it names other versions than those serving, it
  loads, verifies, warms and checks (`check_model`) each new version off the scoring
  thread and leaves the new `ModelSlot` pending. A version that fails is refused
  (`rung_model_refused_total{version,reason}`, `model_refused` log) and the serving
  one keeps serving; the same pointer generation is not retried.
- `between_batches()`, called on the scoring thread at every turn of the worker's poll
  loop (`Worker._collect`: never while a batch is being scored, and every
  `poll_timeout_s` when idle), publishes a pending slot (one reference swap: the next batch is the first
  on the new version; `model_swapped` log, `rung_model_swaps_total`), drains the
  primary's per-version stats into `stream_app.model_metrics` and feeds the canary's
  `RollbackRule`. When the rule trips, the canary is removed at once locally (the
  next batch is all champion) and the watch thread then removes it from
  `promoted.json` with the reason, so every worker drops it at its next poll.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np
import structlog

from scorers.clock import Clock
from scorers.models.canary import Counts, RollbackRule
from scorers.models.manifest import ModelIntegrityError
from scorers.models.registry import CanarySpec, Pointer, Registry, RegistryError
from scorers.models.slot import Canary, ModelSlot, ModelSwitch
from scorers.ports import Model

if TYPE_CHECKING:
    from scorers.ladder import Ladder
    from stream_app.metrics import Metrics
    from stream_app.model_metrics import ModelMetrics

log = structlog.get_logger(__name__)

WARM_SIZES: Final = (1, 64, 512)
Loader = Callable[[Path], Model]  # load + verify a version directory; raises on failure


class ModelRefused(RuntimeError):
    def __init__(self, version: str, reason: str, detail: str) -> None:
        super().__init__(f"{version}: {reason}: {detail}")
        self.version, self.reason, self.detail = version, reason, detail


def check_model(model: Model, expected_features: tuple[str, ...] | None,
                sizes: tuple[int, ...] = WARM_SIZES) -> None:
    """Warm-up and sanity check: the expected features, then one call per batch size on
    zeros; every output must be one finite probability per row. Raises ValueError."""
    if expected_features is not None and tuple(model.feature_names) != expected_features:
        raise ValueError("feature_mismatch: the model expects other features")
    width = len(model.feature_names)
    for n in sizes:
        out = np.asarray(model.predict(np.zeros((n, width), dtype=np.float32)))
        if out.shape != (n,):
            raise ValueError(f"warm-up returned shape {out.shape} for {n} rows")
        if not (np.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()):
            raise ValueError(f"warm-up returned non-finite or out-of-range scores for {n} rows")


def load_version(registry: Registry, version: str, load: Loader,
                 expected_features: tuple[str, ...] | None) -> Model:
    """Verify (sha256), load and warm one registry version, or raise `ModelRefused`."""
    try:
        registry.verify(version)
        model = load(registry.version_dir(version))
    except (ModelIntegrityError, RegistryError) as exc:
        raise ModelRefused(version, "integrity", str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - any load failure refuses the version
        raise ModelRefused(version, "load", f"{type(exc).__name__}: {exc}") from exc
    try:
        check_model(model, expected_features)
    except Exception as exc:  # noqa: BLE001 - any warm-up failure refuses the version
        raise ModelRefused(version, "warm_up", f"{type(exc).__name__}: {exc}") from exc
    return model


@dataclass(frozen=True, slots=True)
class _Pending:
    slot: ModelSlot
    canary: CanarySpec | None
    generation: int


class ModelWatch:
    def __init__(self, registry: Registry, switch: ModelSwitch, load: Loader, *,
                 clock: Clock, poll_s: float, canary: CanarySpec | None, generation: int,
                 expected_features: tuple[str, ...] | None = None,
                 on_swap: Callable[[ModelSlot], None] | None = None) -> None:
        self.registry, self.switch, self._load = registry, switch, load
        self.clock, self.poll_s = clock, poll_s
        self.expected_features = expected_features
        self.on_swap = on_swap
        self.metrics: ModelMetrics | None = None
        self.canary = canary  # the spec of the canary serving now (None: none)
        self.rule = RollbackRule(canary.bounds) if canary is not None else None
        self._generation = generation  # the pointer generation last acted on
        self._pending: _Pending | None = None
        self._rollback: tuple[str, str] | None = None  # (version, reason) to write back
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.initially_refused: list[ModelRefused] = []  # at start, before metrics existed

    # -- the watch thread ------------------------------------------------------------------------
    def start(self) -> ModelWatch:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="rung-model-watch",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.write_rollback()
                self.poll_once()
            except Exception:  # noqa: BLE001 - the watch must outlive one bad poll
                log.exception("model_watch_error")

    def poll_once(self) -> bool:
        """Read the pointer; on a new generation naming other versions, prepare the new
        slot (load, verify, warm) and leave it pending. True: a slot is pending."""
        try:
            p = self.registry.pointer()
        except RegistryError as exc:
            log.error("model_registry_unreadable", error=str(exc))
            return False
        if p.generation == self._generation:
            return False
        self._generation = p.generation
        with self._lock:
            base = self._pending.slot if self._pending is not None else self.switch.slot
        slot, canary = self._prepare(p, base)
        if slot is None:
            return False
        with self._lock:
            self._pending = _Pending(slot, canary, p.generation)
        return True

    def _prepare(self, p: Pointer, base: ModelSlot) -> tuple[ModelSlot | None, CanarySpec | None]:
        serving_champ, serving_cand = base.versions
        champion = base.champion
        if p.champion is not None and p.champion != serving_champ:
            try:
                champion = self._load_version(p.champion)
            except ModelRefused as exc:
                self._refused(exc, p.generation)
                return None, None  # keep everything as it is, until the pointer changes
        spec = p.canary
        canary = None
        if spec is not None and spec.version == (champion.version if champion else ""):
            spec = None  # the candidate was promoted: no canary of it against itself
        if spec is not None:
            try:
                model = (base.canary.model if base.canary is not None
                         and spec.version == serving_cand else self._load_version(spec.version))
                canary = Canary(model, spec.fraction, spec.key)
            except ModelRefused as exc:
                self._refused(exc, p.generation)
                spec = None
        slot = ModelSlot(champion, canary)
        if slot.versions == base.versions and spec == self.canary:
            return None, None
        return slot, spec

    def _load_version(self, version: str) -> Model:
        t0 = self.clock.monotonic()
        model = load_version(self.registry, version, self._load, self.expected_features)
        log.info("model_loaded", version=version, seconds=round(self.clock.monotonic() - t0, 3))
        return model

    def _refused(self, exc: ModelRefused, generation: int) -> None:
        log.error("model_refused", version=exc.version, reason=exc.reason, detail=exc.detail,
                  generation=generation, serving=self.switch.slot.versions[0])
        if self.metrics is not None:
            self.metrics.refused(exc.version, exc.reason)

    def write_rollback(self) -> None:
        """Write a rollback decided on the scoring thread to `promoted.json`."""
        with self._lock:
            todo, self._rollback = self._rollback, None
        if todo is not None:
            version, reason = todo
            p = self.registry.stop_canary(f"automatic: {reason}", version=version)
            self._generation = max(self._generation, p.generation)  # already applied here

    # -- on the scoring thread, between batches ---------------------------------------------------
    def between_batches(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self._publish(pending.slot, pending.canary, f"generation {pending.generation}")
        self._account()

    def _publish(self, slot: ModelSlot, canary: CanarySpec | None, why: str) -> None:
        old = self.switch.publish(slot)
        champ, cand = slot.versions
        old_champ, old_cand = old.versions
        if canary != self.canary:
            self.rule = RollbackRule(canary.bounds) if canary is not None else None
        self.canary = canary
        log.info("model_swapped", champion=champ, canary=cand or None,
                 fraction=canary.fraction if canary is not None else 0.0,
                 previous_champion=old_champ, previous_canary=old_cand or None, why=why)
        if self.metrics is not None:
            if champ != old_champ:
                self.metrics.swapped("champion")
            if cand != old_cand or canary is not None and old.canary is not None \
                    and old.canary.fraction != canary.fraction:
                self.metrics.swapped("canary")
            self._set_live()
        if self.on_swap is not None and champ != old_champ:
            self.on_swap(slot)

    def _set_live(self) -> None:
        if self.metrics is not None:
            champ, cand = self.switch.slot.versions
            self.metrics.set_live(champ, cand, self.canary.fraction if self.canary else 0.0)

    def _account(self) -> None:
        stats = self.switch.stats.drain()
        m = self.metrics
        if m is not None:
            for version, s in stats.items():
                c = s.counts
                m.version_rows(version, answered=c.answered, review=c.review, failed=c.failed)
                m.version_scores(version, s.scores)
                m.version_forward(version, s.forward_s)
        rule, slot = self.rule, self.switch.slot
        if rule is None or slot.canary is None or slot.champion is None:
            return
        champ, cand = slot.versions
        now = self.clock.monotonic()
        rule.observe(now, stats[champ].counts if champ in stats else Counts(),
                     stats[cand].counts if cand in stats else Counts())
        verdict = rule.evaluate(now)
        if not verdict.trip:
            return
        log.error("canary_rolled_back", version=cand, reason=verdict.reason,
                  detail=verdict.detail, champion=champ)
        if m is not None:
            m.rolled_back(cand, verdict.reason)
        with self._lock:
            self._rollback = (cand, f"{verdict.reason}: {verdict.detail}")
            if self._pending is not None and self._pending.canary is not None \
                    and self._pending.canary.version == cand:
                self._pending = None  # an older decision to keep it
        self._publish(ModelSlot(slot.champion), None, f"rollback {verdict.reason}")


# -- building it ----------------------------------------------------------------------------------
def initial_slot(registry: Registry, load: Loader, expected_features: tuple[str, ...] | None,
                 on_refused: Callable[[ModelRefused], None]) -> tuple[ModelSlot, Pointer]:
    """The champion (else the newest previous champion that loads) and the canary."""
    p = registry.pointer()
    champion: Model | None = None
    for version in ([p.champion] if p.champion else []) + list(reversed(p.previous)):
        try:
            champion = load_version(registry, version, load, expected_features)
            break
        except ModelRefused as exc:
            on_refused(exc)
    canary = None
    if champion is not None and p.canary is not None and p.canary.version != champion.version:
        try:
            model = load_version(registry, p.canary.version, load, expected_features)
            canary = Canary(model, p.canary.fraction, p.canary.key)
        except ModelRefused as exc:
            on_refused(exc)
    return ModelSlot(champion, canary), p


class NoWatch:
    """The worker's watch when its primary does not come from a registry: does nothing."""

    def between_batches(self) -> None:
        return None


NO_WATCH: Final = NoWatch()
_WATCHES: weakref.WeakKeyDictionary[Ladder, ModelWatch] = weakref.WeakKeyDictionary()
_METRICS: weakref.WeakKeyDictionary[Metrics, ModelMetrics] = weakref.WeakKeyDictionary()


def build_model_switch(registry_dir: Path, load: Loader, *, clock: Clock, poll_s: float,
                       expected_features: tuple[str, ...] | None,
                       ) -> tuple[ModelSwitch, ModelWatch]:
    registry = Registry(registry_dir)
    refused: list[ModelRefused] = []

    def note(exc: ModelRefused) -> None:
        refused.append(exc)
        log.error("model_refused", version=exc.version, reason=exc.reason, detail=exc.detail)
    slot, p = initial_slot(registry, load, expected_features, note)
    switch = ModelSwitch(slot)
    canary = p.canary if slot.canary is not None else None
    watch = ModelWatch(registry, switch, load, clock=clock, poll_s=poll_s, canary=canary,
                       generation=p.generation, expected_features=expected_features)
    watch.initially_refused = refused
    log.info("model_registry", root=str(registry_dir), champion=slot.versions[0] or None,
             canary=slot.versions[1] or None, generation=p.generation)
    return switch, watch


def register(ladder: Ladder, watch: ModelWatch) -> None:
    """Tie a watch to its ladder (the worker finds it with `for_worker`); stopped with it."""
    _WATCHES[ladder] = watch
    weakref.finalize(ladder, watch.stop, 0.0)


def for_worker(scorer: object, metrics: object | None) -> ModelWatch | None:
    """The ladder's model watch, bound to the worker's metrics and started (None: the
    worker's primary does not come from a registry). A runtime that never calls this (the
    faust agent) serves the registry's champion from its start, without swaps."""
    try:
        watch: ModelWatch | None = _WATCHES.get(scorer)  # type: ignore[call-overload]
    except TypeError:  # not weak-referenceable: not a ladder
        return None
    if watch is None:
        return None
    from stream_app.metrics import Metrics
    from stream_app.model_metrics import ModelMetrics

    if isinstance(metrics, Metrics) and watch.metrics is None:
        mm = _METRICS.get(metrics)
        if mm is None:
            mm = _METRICS[metrics] = ModelMetrics(metrics.registry)
        watch.metrics = mm
        for exc in watch.initially_refused:
            mm.refused(exc.version, exc.reason)
        watch._set_live()
    watch.switch.stats.enabled = True  # this worker drains them between batches
    return watch.start()
