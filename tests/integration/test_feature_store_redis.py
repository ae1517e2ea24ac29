"""The Redis feature store against a real local redis-server: agreement with training."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from scorers.feature_store import RedisFeatureStore
from scorers.features import offline_online_features
from scorers.sim import SimConfig, simulate, to_transactions
from topics.schemas import Transaction

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)


def test_offline_and_redis_store_agree_exactly(redis_url: str) -> None:
    data = simulate(SimConfig(n_customers=120, n_terminals=240, n_days=45), seed=3)
    day = (data.event_time_s // 86_400).astype(np.int64)
    expected = offline_online_features(day, data.customer, data.terminal, data.amount,
                                       data.is_fraud)
    store = RedisFeatureStore(_client(redis_url), prefix="test:agree")
    txs = to_transactions(data)
    rng = np.random.default_rng(0)
    out, lo = [], 0
    while lo < len(txs):
        hi = lo + int(rng.integers(1, 200))
        features, available = store.fetch(txs[lo:hi], timeout_s=2.0)
        assert available.all()
        out.append(features)
        store.update(txs[lo:hi], timeout_s=2.0)
        store.record_labels(txs[lo:hi], data.is_fraud[lo:hi], timeout_s=2.0)
        lo = hi
    np.testing.assert_array_equal(np.concatenate(out), expected)


def test_layout_is_one_hash_per_customer_and_terminal_with_ttl(redis_url: str) -> None:
    client = _client(redis_url)
    store = RedisFeatureStore(client, prefix="test:layout", ttl_s=3600)
    t = Transaction("a", 20_000 * 86_400 + 5.0, "c9", "t9", 12.34, "EUR", "5411", False, True,
                    100, "pos")
    store.update([t], 1.0)
    store.record_labels([t], [True], 1.0)
    assert client.hgetall("test:layout:c:c9") == {b"20000:n": b"1", b"20000:s": b"1234"}
    assert client.hgetall("test:layout:t:t9") == {b"20000:n": b"1", b"20000:f": b"1"}
    assert 0 < client.ttl("test:layout:c:c9") <= 3600


def test_unreachable_redis_raises() -> None:
    client = redis.Redis(port=_free_port(), socket_timeout=0.2, socket_connect_timeout=0.2)
    store = RedisFeatureStore(client)
    t = Transaction("a", 86_400.0, "c", "t", 1.0, "EUR", "5411", False, True, 1, "pos")
    with pytest.raises(redis.ConnectionError):
        store.fetch([t], timeout_s=0.2)
