"""Assembling the ladder from settings: models, Redis cache, feature store.

The one place where the edge decides which concrete adapters the pure core
gets. Redis clients are created here with short socket timeouts so that a
slow Redis can never hold a batch past its deadline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import redis
import structlog

from scorers.cache import RedisPredictionCache
from scorers.clock import Clock, SystemClock
from scorers.config import CacheConfig, LadderConfig
from scorers.feature_store import RedisFeatureStore
from scorers.features import event_features
from scorers.ladder import Ladder, build_ladder
from scorers.listeners import LadderListener
from scorers.models.defaults import FALLBACK_DIR, PRIMARY_DIR
from scorers.models.manifest import ModelIntegrityError
from scorers.models.torch_model import TorchModel
from stream_app.config import Settings

log = structlog.get_logger(__name__)


def redis_client(settings: Settings) -> redis.Redis | None:
    r = settings.redis
    if not r.enabled or r.url is None:
        return None
    kwargs: dict[str, Any] = {"socket_timeout": r.socket_timeout_s,
                              "socket_connect_timeout": max(r.socket_timeout_s, 0.1),
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


def load_primary(model_dir: Path, device: str, threads: int) -> tuple[TorchModel | None, str | None]:
    """The primary model, or None and the reason when its weights fail integrity checks."""
    try:
        return TorchModel.load(model_dir, device=device, threads=threads), None
    except ModelIntegrityError as exc:
        log.error("primary_unavailable", reason=str(exc), model_dir=str(model_dir))
        return None, str(exc)


def build_scorer(settings: Settings, listener: LadderListener | None = None,
                 clock: Clock | None = None, primary_wrapper: Any = None) -> Ladder:
    m = settings.models
    primary, reason = load_primary(Path(m.primary_dir or PRIMARY_DIR), m.device, m.primary_threads)
    if primary is not None and primary_wrapper is not None:
        primary = primary_wrapper(primary)
    fallback = TorchModel.load(Path(m.fallback_dir or FALLBACK_DIR), device="cpu", threads=1)
    lad = settings.ladder
    clock = clock or SystemClock()
    cache_config = CacheConfig(timeout_s=lad.cache_timeout_s)
    client = redis_client(settings)
    cache = RedisPredictionCache(client, cache_config, clock) if client is not None else None
    store = RedisFeatureStore(client) if client is not None else None
    config = LadderConfig(deadline_s=settings.batch.deadline_s,
                          feature_timeout_s=lad.feature_timeout_s,
                          fallback_reserve_s=lad.fallback_reserve_s,
                          primary_threads=lad.primary_bulkhead_threads,
                          primary_max_outstanding=lad.primary_bulkhead_threads,
                          cache=cache_config)
    ladder = build_ladder(config, primary=primary, fallback=fallback, cache=cache,
                          feature_store=store, event_features=event_features,
                          clock=clock, listener=listener,
                          primary_unavailable_reason=reason)
    warm_up(ladder)
    return ladder


def warm_up(ladder: Ladder, batch_sizes: tuple[int, ...] = (1, 64, 512)) -> None:
    """Run each model once per batch size on zeros before the first record: the first
    torch calls (allocator, kernels, thread pools) are slow, and they must not eat the
    first real batches' deadlines. Nothing is written anywhere."""
    for model in (ladder.primary, ladder.fallback):
        if model is None:
            continue
        width = len(model.feature_names)
        for n in batch_sizes:
            try:
                model.predict(np.zeros((n, width), dtype=np.float32))
            except Exception as exc:  # noqa: BLE001 - a broken model is the ladder's business
                log.warning("warm_up_failed", model=model.version, error=str(exc))
                break
