"""RedisPredictionCache against a real redis-server: the cache contract, and Redis
stopped (then restarted) in the middle of a run. Each fixture starts its own
server on a free port (`redis_url` here shadows the shared stack's)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from scorers.breaker import State
from scorers.cache import RedisPredictionCache
from scorers.clock import FakeClock
from scorers.config import DEFAULT_BREAKERS, CacheConfig
from scorers.deadline import Deadline
from tests.unit.scorers.cache_contract import CONFIG, CacheContract
from tests.unit.scorers.ladder_fakes import build, make_tx, small_config
from topics.schemas import Tier

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=0.2)
        for _ in range(200):
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def key_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def cache(redis_url: str, clock: FakeClock) -> Iterator[RedisPredictionCache]:
    c = RedisPredictionCache.from_url(redis_url, CONFIG, clock)
    yield c
    c.close()


class TestRedisCache(CacheContract):
    def test_entries_carry_the_hard_ttl(self, cache: RedisPredictionCache, redis_url: str,
                                        key_prefix: str) -> None:
        from scorers.ports import CachedPrediction

        (key,) = self.keys(key_prefix, 1)
        cache.put_many([(key, CachedPrediction(0.5, 0.1, 0.0))], 0.5)
        ttl_ms = redis.Redis.from_url(redis_url).pttl(key)
        assert 0 < ttl_ms <= CONFIG.hard_ttl_s * 1000


def test_redis_stopped_mid_run_then_back(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    clock = FakeClock()
    cfg = CacheConfig(enabled=True, soft_ttl_s=60, hard_ttl_s=600, timeout_s=0.05, key_prefix=f"t{uuid.uuid4().hex[:8]}")
    cache = RedisPredictionCache.from_url(server.url, cfg, clock)
    ladder = build(clock, cache=cache, config=small_config(cache=cfg))
    txs = [make_tx(i) for i in range(32)]
    try:
        assert {s.tier for s in ladder.score_batch(txs, Deadline.after(clock, 0.5))} == {Tier.PRIMARY}
        assert {s.tier for s in ladder.score_batch(txs, Deadline.after(clock, 0.5))} == {Tier.CACHE}
        server.stop()
        for _ in range(12):  # every record still answered while Redis is gone
            scores = ladder.score_batch(txs, Deadline.after(clock, 0.5))
            assert [s.transaction_id for s in scores] == [t.transaction_id for t in txs]
            assert {s.tier for s in scores} == {Tier.PRIMARY}
        breaker = ladder.breakers["cache"]
        assert breaker.state is State.OPEN
        server.start()  # same port, empty
        clock.advance(cfg.timeout_s + DEFAULT_BREAKERS["cache"].max_open_wait_s)
        for _ in range(4):
            ladder.score_batch(txs, Deadline.after(clock, 0.5))
        assert breaker.state is State.CLOSED
        scores = ladder.score_batch(txs, Deadline.after(clock, 0.5))
        assert {s.tier for s in scores} == {Tier.CACHE}
    finally:
        ladder.close()
        cache.close()
        server.stop()
