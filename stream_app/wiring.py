"""Assembling the ladder from settings: models, Redis cache, feature store, faults.

The one place where the edge decides which concrete adapters the pure core
gets. Torch's process-wide thread count is set here, once. Redis clients are
created here with short socket timeouts so that a slow Redis can never hold a
batch past its deadline; the prediction cache (off by default) gets its own
client whose socket timeout is the cache's timeout. With fault injection the
dependencies are wrapped before the ladder is built (`build_faulty_scorer`).
A live ladder gets a run-time integrity checker of its models' in-memory weights
(`scorers.models.integrity`, a daemon thread every `integrity_check_interval_s`;
`integrity_checker(ladder)` finds it, `stop_integrity(ladder)` stops it).

Before the worker takes partitions, everything the first batches would pay for
once is paid here (`warm_up`, `warm_feature_store`): each model's first calls per
batch size, on every thread of the primary's bulkhead; the Redis connections the
feature store uses; the merge script loaded on the server; one full-size feature
fetch and event-feature call. Measured before this (docs/budgets.md): most
fallback answers of a healthy `make demo` came in the first seconds after the
worker joined.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import redis
import structlog
import torch
from redis.exceptions import RedisError
from threadpoolctl import threadpool_limits

from scorers.cache import RedisPredictionCache
from scorers.clock import Clock, SystemClock
from scorers.executor import BoundedExecutor
from scorers.explain import ExplainConfig
from scorers.feature_ring import MERGE_LUA
from scorers.feature_store import RedisFeatureStore
from scorers.features import EVENT_FEATURE_NAMES, ONLINE_FEATURE_NAMES, event_features
from scorers.ladder import Ladder, Mode
from scorers.listeners import LadderListener
from scorers.models.defaults import FALLBACK_DIR, PRIMARY_DIR
from scorers.models.integrity import IntegrityChecker, Target, target_of
from scorers.models.loading import Loaded, load_model
from scorers.models.manifest import ModelIntegrityError
from scorers.models.slot import ModelSlot, ModelSwitch
from scorers.policy import PolicyListener
from scorers.ports import FeatureStore, Model, PredictionCache
from scorers.standard import standard_ladder
from scorers.tiers.fallback import FallbackTier
from scorers.tiers.primary import PrimaryTier
from stream_app.config import Settings
from stream_app.live.model_watch import ModelWatch, build_model_switch
from stream_app.live.model_watch import register as register_watch
from stream_app.live.shadow_tap import register_tap, tap_for
from stream_app.policy_watch import open_policy, watch_policy
from topics.schemas import Transaction

if TYPE_CHECKING:
    from stream_app.ops.faults_admin import FaultWrappers, Switchboard

log = structlog.get_logger(__name__)


def redis_client(settings: Settings, socket_timeout_s: float | None = None) -> redis.Redis | None:
    r = settings.redis
    if not r.enabled or r.url is None:
        return None
    timeout_s = r.socket_timeout_s if socket_timeout_s is None else socket_timeout_s
    kwargs: dict[str, Any] = {"socket_timeout": timeout_s,
                              "socket_connect_timeout": max(timeout_s, 0.1),
                              "health_check_interval": 0}
    if r.password is not None:
        kwargs["password"] = r.password.get_secret_value()
    url = r.url.get_secret_value()
    if r.tls:
        # TLS is chosen by the URL scheme; redis-py refuses ssl=True on a plain URL.
        if url.startswith("redis://"):
            url = "rediss://" + url[len("redis://"):]
        if r.tls_ca_file:
            kwargs["ssl_ca_certs"] = r.tls_ca_file
    return redis.Redis.from_url(url, **kwargs)


def _load(role: str, model_dir: Path, device: str) -> Loaded:
    loaded = load_model(model_dir, device=device, role=role)
    if loaded.reason:
        log.error(f"{role}_unavailable", reason=loaded.reason, model_dir=str(model_dir))
    return loaded


def build_scorer(settings: Settings, listener: LadderListener | None = None,
                 clock: Clock | None = None,
                 primary_wrapper: Callable[[Model], Model] | None = None, *,
                 mode: Mode = "live", replay_deadline_s: float | None = None,
                 faults: FaultWrappers | None = None,
                 on_integrity_failure: Callable[[str], None] | None = None) -> Ladder:
    """The worker's ladder. `primary_wrapper` / `faults` wrap dependencies before the
    ladder is built; `mode="replay"` builds the replay ladder (no cache, no feature
    writes, budgets scaled to `replay_deadline_s`). A live ladder's models get the
    integrity checker; `on_integrity_failure(tier)` hears each failed check."""
    m = settings.models
    torch.set_num_threads(m.torch_threads)  # process-wide, once, from settings
    threadpool_limits(m.torch_threads, user_api="blas")  # numpy's too (scorers.explain)
    from_registry = m.registry_dir is not None and mode == "live"
    primary = Loaded(None) if from_registry else _load("primary", Path(m.primary_dir or PRIMARY_DIR),
                                                       m.device)
    fallback = _load("fallback", Path(m.fallback_dir or FALLBACK_DIR), "cpu")
    primary_model = primary.model
    if primary_model is not None and primary_wrapper is not None:
        primary_model = primary_wrapper(primary_model)
    if primary_model is not None and faults is not None:
        primary_model = faults.model(primary_model)
    lad = settings.ladder
    clock = clock or SystemClock()
    watch = None
    if from_registry:  # the primary from a model registry, hot-swapped (live/model_watch.py)
        switch, watch = _registry_switch(settings, clock, primary_wrapper, faults)
        primary_model = switch.slot.champion
        primary = Loaded(primary_model, "" if primary_model else "registry: no usable version")
    config = lad.ladder_config(m.device)
    client = redis_client(settings)
    store: FeatureStore | None = RedisFeatureStore(
        client, quick_ack=settings.redis.tcp_quick_ack) if client is not None else None
    cache: PredictionCache | None = None
    if config.cache.enabled and mode == "live":
        cache_client = redis_client(settings, socket_timeout_s=config.cache.timeout_s)
        if cache_client is not None:
            cache = RedisPredictionCache(cache_client, config.cache, clock)
    if faults is not None:
        cache = faults.cache(cache) if cache is not None else None
        store = faults.feature_store(store) if store is not None else None
    # the shadow's copy of the primary's inputs (stream_app.live.shadow_tap)
    tap = tap_for(store, settings) if store is not None and mode == "live" else None
    # the policy file (scorers/policy.py): loaded now, watched in live mode
    policy_listener = listener if isinstance(listener, PolicyListener) else None
    holder, policy_file = open_policy(settings.policy.path, policy_listener)
    ex = settings.explain
    explain = ExplainConfig(ex.top_k, ex.all_records, ex.method, ex.ig_steps,
                            batch_budget_s=ex.batch_budget_s) \
        if ex.enabled and (mode == "live" or ex.in_replay) else None
    ladder = standard_ladder(config, primary=primary_model, fallback=fallback.model,
                             cache=cache, feature_store=tap or store,
                             event_features=event_features,
                             clock=clock, listener=listener,
                             primary_unavailable_reason=primary.reason or None,
                             fallback_unavailable_reason=fallback.reason or None,
                             breakers=lad.breaker_configs(), mode=mode,
                             replay_deadline_s=replay_deadline_s, policy=holder,
                             explain=explain, primary_switch=watch.switch if watch else None)
    if tap is not None:
        register_tap(ladder, tap)
    if policy_file is not None and mode == "live":
        watch_policy(ladder, holder, policy_file, settings.policy.poll_interval_s,
                     policy_listener)
    warm_up(ladder)
    if ladder.explanations is not None:
        ladder.explanations.warm()  # autograd's first backward, before the first batch
    if client is not None:
        warm_feature_store(client, RedisFeatureStore(client,
                                                     quick_ack=settings.redis.tcp_quick_ack))
    # K1 adds `integrity_check_interval_s` to LadderSettings; until then, the default.
    interval_s = float(getattr(lad, "integrity_check_interval_s",
                               config.integrity_check_interval_s))
    if mode == "live":
        start_integrity(ladder, interval_s, clock, on_integrity_failure)
    if watch is not None:
        register_watch(ladder, watch)
        watch.on_swap = _integrity_follows_swaps(ladder, interval_s, clock, on_integrity_failure)
    return ladder


def _registry_switch(settings: Settings, clock: Clock,
                     wrapper: Callable[[Model], Model] | None,
                     faults: FaultWrappers | None) -> tuple[ModelSwitch, ModelWatch]:
    """The primary's switch and watch from `models.registry_dir`; every version loaded is
    wrapped like a fixed-dir primary (`primary_wrapper`, fault switches)."""
    m = settings.models
    assert m.registry_dir is not None

    def load(version_dir: Path) -> Model:
        loaded = load_model(version_dir, device=m.device, role="primary")
        if loaded.model is None or loaded.reason:
            raise ModelIntegrityError(loaded.reason or "not loaded")
        model = loaded.model if wrapper is None else wrapper(loaded.model)
        return model if faults is None else faults.model(model)
    return build_model_switch(Path(m.registry_dir), load, clock=clock,
                              poll_s=m.registry_poll_s,
                              expected_features=(*EVENT_FEATURE_NAMES, *ONLINE_FEATURE_NAMES))


def _integrity_follows_swaps(ladder: Ladder, interval_s: float, clock: Clock,
                             on_failure: Callable[[str], None] | None,
                             ) -> Callable[[ModelSlot], None]:
    """After a champion swap, the integrity checker checks the new champion's weights."""
    ref = weakref.ref(ladder)

    def restart(_slot: ModelSlot) -> None:
        lad = ref()
        if lad is not None and interval_s > 0:
            stop_integrity(lad)
            start_integrity(lad, interval_s, clock, on_failure)
    return restart


_CHECKERS: weakref.WeakKeyDictionary[Ladder, IntegrityChecker] = weakref.WeakKeyDictionary()


def start_integrity(ladder: Ladder, interval_s: float, clock: Clock,
                    on_failure: Callable[[str], None] | None = None) -> IntegrityChecker | None:
    """Start checking the in-memory weights of the ladder's usable model tiers every
    `interval_s` (0: off) on a daemon thread; stopped with the ladder's collection or
    `stop_integrity`. The thread holds the modules and breakers, never the ladder."""
    if interval_s <= 0:
        return None
    targets: list[Target] = []
    for tier in ladder.tiers:
        if not isinstance(tier, PrimaryTier | FallbackTier) or tier.model is None \
                or tier.unavailable_reason or not tier.needs:
            continue
        breaker = ladder.breakers.get(tier.needs[0])
        target = target_of(tier.name, tier.model, breaker) if breaker is not None else None
        if target is not None:
            targets.append(target)
    if not targets:
        return None
    checker = IntegrityChecker(targets, interval_s, clock, on_failure).start()
    _CHECKERS[ladder] = checker
    weakref.finalize(ladder, checker.stop, 0.0)
    log.info("model_integrity_checks", tiers=[t.tier for t in targets], interval_s=interval_s)
    return checker


def integrity_checker(ladder: Ladder) -> IntegrityChecker | None:
    return _CHECKERS.get(ladder)


def stop_integrity(ladder: Ladder) -> None:
    checker = _CHECKERS.pop(ladder, None)
    if checker is not None:
        checker.stop()


def build_faulty_scorer(settings: Settings, listener: LadderListener | None = None,
                        clock: Clock | None = None,
                        on_integrity_failure: Callable[[str], None] | None = None,
                        ) -> tuple[Ladder, Switchboard]:
    """The worker's ladder with its dependencies behind fault switches, and the
    `/admin/faults` switchboard for them."""
    from stream_app.ops.faults_admin import FaultWrappers

    wrappers = FaultWrappers()
    ladder = build_scorer(settings, listener=listener, clock=clock, faults=wrappers,
                          on_integrity_failure=on_integrity_failure)
    return ladder, wrappers.switchboard(ladder.breakers)


WARM_BATCH_SIZES: Final = (1, 64, 512)
REDIS_WARM_CONNECTIONS: Final = 2  # the scoring thread's fetches and the feature writes
WARM_TIMEOUT_S: Final = 10.0


def warm_up(ladder: Ladder, batch_sizes: tuple[int, ...] = WARM_BATCH_SIZES) -> None:
    """Run each model once per batch size on zeros before the first record: the first
    torch calls (allocator, kernels, thread pools) are slow, and they must not eat the
    first real batches' deadlines. A model behind a bulkhead is warmed on every one of
    its threads (which are started now). Nothing is written anywhere."""
    for tier in ladder.tiers:
        if not isinstance(tier, PrimaryTier | FallbackTier) or tier.model is None \
                or tier.unavailable_reason:
            continue
        model = tier.model
        executor = getattr(tier, "executor", None)
        try:
            if isinstance(executor, BoundedExecutor):
                executor.warm(partial(_predict_sizes, model, batch_sizes), WARM_TIMEOUT_S)
            else:
                _predict_sizes(model, batch_sizes)
        except Exception as exc:  # noqa: BLE001 - a broken model is the ladder's business
            log.warning("warm_up_failed", model=model.version, error=str(exc))


def _predict_sizes(model: Model, batch_sizes: tuple[int, ...]) -> None:
    width = len(model.feature_names)
    for n in batch_sizes:
        model.predict(np.zeros((n, width), dtype=np.float32))


def warm_feature_store(client: redis.Redis, store: FeatureStore,
                       batch_size: int = WARM_BATCH_SIZES[-1]) -> bool:
    """Open the feature store's Redis connections, load its merge script on the server
    and run one full-size fetch (and event-feature call) on keys that do not exist:
    reads only. False (and a warning) when Redis is not there; the ladder copes."""
    t0 = time.monotonic()
    pool = client.connection_pool
    conns = []
    try:
        for _ in range(REDIS_WARM_CONNECTIONS):
            conns.append(pool.get_connection())  # connects now
    except (RedisError, OSError) as exc:
        log.warning("feature_store_warm_up_failed", step="connect", error=str(exc))
        return False
    finally:
        for conn in conns:
            pool.release(conn)
    try:
        client.script_load(MERGE_LUA)  # the first merge then finds it on the server
    except (RedisError, OSError) as exc:
        log.warning("feature_store_warm_up_failed", step="script_load", error=str(exc))
        return False
    txs = warm_transactions(batch_size)
    try:
        event_features(txs)
        store.fetch(txs, WARM_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - warming must never stop the worker
        log.warning("feature_store_warm_up_failed", step="fetch", error=str(exc))
        return False
    log.info("feature_store_warm", connections=len(conns),
             seconds=round(time.monotonic() - t0, 3))
    return True


def warm_transactions(n: int) -> list[Transaction]:
    """`n` valid transactions on entities no real traffic uses (`rung-warm-*`): a read of
    them touches no real key. Customers repeat, as in real batches."""
    now = time.time()
    return [Transaction(transaction_id=f"rung-warm-{i}", event_time_s=now,
                        customer_id=f"rung-warm-c{i % max(1, n // 2)}",
                        terminal_id=f"rung-warm-t{i % max(1, n // 4)}",
                        amount=float(10 + i % 300), currency="EUR", merchant_category="5411",
                        is_international=False, has_international_history=False,
                        account_age_days=365, channel="pos")
            for i in range(n)]
