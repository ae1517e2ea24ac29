"""The Redis feature store against a real local redis-server: agreement with training,
the ring layout, concurrent writers, slot reuse, and the bulk loader."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt
import pytest
import redis

from scorers.feature_ring import RING_BYTES, RING_SLOTS, SLOT_DTYPE, ack_promptly
from scorers.feature_store import RedisFeatureStore
from scorers.features import ONLINE_FEATURE_NAMES, offline_online_features
from scorers.lab.sim import SimConfig, SimData, simulate, to_transactions
from scorers.lab.sim.demo import LabelledStream, warm_feature_store
from topics.schemas import Transaction

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed"),
]

COL = {name: i for i, name in enumerate(ONLINE_FEATURE_NAMES)}
DAY = 86_400


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
    return redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=2.0)


def _tx(i: int, day: int, customer: str = "c1", terminal: str = "t1",
        amount: float = 10.0) -> Transaction:
    return Transaction(f"x{i}", day * DAY + 60.0 + i, customer, terminal, amount, "EUR", "5411",
                       False, True, 100, "pos")


def _offline(data: SimData) -> npt.NDArray[np.float32]:
    day = (data.event_time_s // DAY).astype(np.int64)
    return offline_online_features(day, data.customer, data.terminal, data.amount,
                                   data.is_fraud)


def _stream(store: RedisFeatureStore, data: SimData, max_batch: int,
            seed: int = 0) -> npt.NDArray[np.float32]:
    """Fetch, update, then record labels, batch by batch (random sizes up to max_batch)."""
    txs = to_transactions(data)
    rng = np.random.default_rng(seed)
    out, lo = [], 0
    while lo < len(txs):
        hi = lo + int(rng.integers(1, max_batch + 1))
        features, available = store.fetch(txs[lo:hi], timeout_s=5.0)
        assert available.all()
        out.append(features)
        store.update(txs[lo:hi], timeout_s=5.0)
        store.record_labels(txs[lo:hi], data.is_fraud[lo:hi], timeout_s=5.0)
        lo = hi
    return np.concatenate(out)


def _rings(client: redis.Redis, prefix: str) -> dict[bytes, bytes]:
    """Every ring under `prefix`, keyed by the part after the prefix."""
    keys = sorted(client.scan_iter(match=f"{prefix}:*", count=1000))
    values = client.mget(keys) if keys else []
    return {k[len(prefix):]: v for k, v in zip(keys, values, strict=True)}


def _slot(client: redis.Redis, key: str, day: int) -> tuple[int, int, int]:
    raw = client.get(key)
    assert raw is not None and len(raw) == RING_BYTES
    cell = np.frombuffer(raw, dtype=SLOT_DTYPE)[day % RING_SLOTS]
    return int(cell["day"]), int(cell["n"]), int(cell["v"])


@pytest.mark.parametrize("max_batch", [8, 200, 1500])
def test_offline_and_redis_store_agree_exactly(redis_url: str, max_batch: int) -> None:
    data = simulate(SimConfig(n_customers=120, n_terminals=240, n_days=45), seed=3)
    expected = _offline(data)
    assert expected[:, COL["terminal_risk_30d_delay7"]].max() > 0  # the labels matter
    store = RedisFeatureStore(_client(redis_url), prefix=f"test:agree{max_batch}")
    np.testing.assert_array_equal(_stream(store, data, max_batch, seed=max_batch), expected)


def test_agreement_holds_over_more_days_than_the_ring_has_slots(redis_url: str) -> None:
    # ~60 events a day: a batch of <= 100 never spans the terminal delay (7 days), whose
    # in-batch rows neither store adds (only the customer windows see their own batch)
    data = simulate(SimConfig(n_customers=60, n_terminals=120, n_days=3 * RING_SLOTS), seed=4)
    store = RedisFeatureStore(_client(redis_url), prefix="test:long")
    np.testing.assert_array_equal(_stream(store, data, 100), _offline(data))


def test_layout_is_one_ring_per_customer_and_terminal_with_ttl(redis_url: str) -> None:
    client = _client(redis_url)
    store = RedisFeatureStore(client, prefix="test:layout", ttl_s=3600)
    t = _tx(0, 20_000, customer="c9", terminal="t9", amount=12.34)
    store.update([t, dataclasses.replace(t, transaction_id="y")], 1.0)
    store.record_labels([t], [True], 1.0)
    assert sorted(_rings(client, "test:layout")) == [b":ring:c:c9", b":ring:t:t9"]
    assert _slot(client, "test:layout:ring:c:c9", 20_000) == (20_000, 2, 2468)
    assert _slot(client, "test:layout:ring:t:t9", 20_000) == (20_000, 2, 1)
    assert _slot(client, "test:layout:ring:c:c9", 20_001) == (0, 0, 0)
    assert 0 < client.ttl("test:layout:ring:c:c9") <= 3600
    assert 0 < client.ttl("test:layout:ring:t:t9") <= 3600


def test_a_slot_is_reused_by_a_newer_day_and_ignores_older_writes(redis_url: str) -> None:
    client = _client(redis_url)
    store = RedisFeatureStore(client, prefix="test:reuse")
    old_day, new_day = 1000, 1000 + RING_SLOTS
    store.update([_tx(0, old_day, amount=5.0)], 1.0)
    features, _ = store.fetch([_tx(1, old_day + 1)], 1.0)
    assert features[0, COL["customer_nb_tx_7d"]] == 1
    store.update([_tx(2, new_day, amount=7.0)], 1.0)  # same slot, 64 days later
    assert _slot(client, "test:reuse:ring:c:c1", new_day) == (new_day, 1, 700)
    store.update([_tx(3, old_day, amount=9.0)], 1.0)  # a write too old for any window
    assert _slot(client, "test:reuse:ring:c:c1", new_day) == (new_day, 1, 700)
    features, _ = store.fetch([_tx(4, old_day + 1)], 1.0)  # the old day is gone
    assert features[0, COL["customer_nb_tx_7d"]] == 0
    features, _ = store.fetch([_tx(5, new_day)], 1.0)
    assert features[0, COL["customer_nb_tx_1d"]] == 1
    assert features[0, COL["customer_mean_amount_1d"]] == pytest.approx(7.0)


def test_concurrent_writers_give_the_same_state_as_one(redis_url: str) -> None:
    data = simulate(SimConfig(n_customers=100, n_terminals=200, n_days=70), seed=6)
    txs, fraud = to_transactions(data), data.is_fraud
    client = _client(redis_url)
    one = RedisFeatureStore(client, prefix="test:one")
    for lo in range(0, len(txs), 97):
        one.update(txs[lo:lo + 97], 5.0)
        one.record_labels(txs[lo:lo + 97], fraud[lo:lo + 97], 5.0)

    def writer(parity: int) -> None:
        store = RedisFeatureStore(_client(redis_url), prefix="test:two")
        for k, lo in enumerate(range(0, len(txs), 97)):
            if k % 2 == parity:
                store.update(txs[lo:lo + 97], 5.0)
                store.record_labels(txs[lo:lo + 97], fraud[lo:lo + 97], 5.0)

    threads = [threading.Thread(target=writer, args=(p,)) for p in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    expected = _rings(client, "test:one")
    assert len(expected) == len(set(data.customer)) + len(set(data.terminal))
    assert _rings(client, "test:two") == expected


def _labelled(data: SimData, rows: npt.NDArray[np.int64]) -> LabelledStream:
    txs = to_transactions(data, rows=rows)
    return LabelledStream(tuple(txs), data.is_fraud[rows], data.scenario[rows])


def test_bulk_load_equals_per_batch_updates(redis_url: str) -> None:
    data = simulate(SimConfig(n_customers=60, n_terminals=120, n_days=80), seed=8)
    history = _labelled(data, np.arange(len(data.day), dtype=np.int64))
    client = _client(redis_url)
    per_batch = RedisFeatureStore(client, prefix="test:batches")
    for lo in range(0, len(history), 500):
        per_batch.update(history.transactions[lo:lo + 500], 5.0)
        per_batch.record_labels(history.transactions[lo:lo + 500],
                                history.is_fraud[lo:lo + 500], 5.0)
    bulk = RedisFeatureStore(client, prefix="test:bulk")
    assert warm_feature_store(bulk, history) == len(history)
    expected = _rings(client, "test:batches")
    assert _rings(client, "test:bulk") == expected
    # merged into what is there: half per batch, then the other half in bulk
    mixed = RedisFeatureStore(client, prefix="test:mixed")
    half = len(history) // 2
    mixed.update(history.transactions[:half], 5.0)
    mixed.record_labels(history.transactions[:half], history.is_fraud[:half], 5.0)
    mixed.bulk_load(history.transactions[half:], history.is_fraud[half:], 5.0)
    assert _rings(client, "test:mixed") == expected


def test_writes_survive_a_script_flush(redis_url: str) -> None:
    client = _client(redis_url)
    store = RedisFeatureStore(client, prefix="test:flush")
    store.update([_tx(0, 500)], 1.0)
    client.script_flush()
    store.update([_tx(1, 500)], 1.0)
    assert _slot(client, "test:flush:ring:c:c1", 500) == (500, 2, 2000)


def test_a_corrupt_ring_fails_the_fetch_and_the_next_write_repairs_it(redis_url: str) -> None:
    client = _client(redis_url)
    store = RedisFeatureStore(client, prefix="test:corrupt")
    client.set("test:corrupt:ring:c:c1", b"short")
    with pytest.raises(ValueError, match="feature ring"):
        store.fetch([_tx(0, 700)], 1.0)
    store.update([_tx(1, 700)], 1.0)
    assert _slot(client, "test:corrupt:ring:c:c1", 700) == (700, 1, 1000)


def test_labels_must_match_the_transactions(redis_url: str) -> None:
    store = RedisFeatureStore(_client(redis_url), prefix="test:labels")
    with pytest.raises(ValueError):
        store.record_labels([_tx(0, 5)], [True, False], 1.0)
    with pytest.raises(ValueError):
        store.bulk_load([_tx(0, 5)], [], 1.0)


def test_rows_without_keys_are_unavailable(redis_url: str) -> None:
    store = RedisFeatureStore(_client(redis_url), prefix="test:invalid")
    batch: Sequence[Transaction] = [
        _tx(0, 9), dataclasses.replace(_tx(1, 9), terminal_id=None),
        dataclasses.replace(_tx(2, 9), event_time_s=float("nan")),
        dataclasses.replace(_tx(3, 9), event_time_s=1e300)]
    features, available = store.fetch(batch, 1.0)
    assert available.tolist() == [True, False, False, False]
    assert not features[1:].any()
    store.update(batch, 1.0)
    assert _slot(store._client, "test:invalid:ring:c:c1", 9) == (9, 1, 1000)


def test_unreachable_redis_raises() -> None:
    client = redis.Redis(port=_free_port(), socket_timeout=0.2, socket_connect_timeout=0.2)
    store = RedisFeatureStore(client)
    t = Transaction("a", 86_400.0, "c", "t", 1.0, "EUR", "5411", False, True, 1, "pos")
    with pytest.raises(redis.ConnectionError):
        store.fetch([t], timeout_s=0.2)


# ---- exactly-once application (scorers.feature_store: APPLY_LUA) ------------------------------
def test_apply_ranges_applies_each_range_once_with_its_watermark(redis_url: str) -> None:
    from scorers.feature_store import EVENTS_PER_RANGE
    from scorers.ports import OffsetRange

    data = simulate(SimConfig(n_customers=80, n_terminals=160, n_days=40), seed=9)
    txs, fraud = to_transactions(data), data.is_fraud
    client = _client(redis_url)
    plain = RedisFeatureStore(client, prefix="test:plain")
    plain.update(txs, 5.0)
    plain.record_labels(txs, fraud, 5.0)
    store = RedisFeatureStore(client, prefix="test:once")
    assert store.watermarks(["s:0", "l:0"], 1.0) == [None, None]
    step = EVENTS_PER_RANGE
    ranges = [OffsetRange(lo, min(lo + step, len(txs)), txs[lo:lo + step])
              for lo in range(0, len(txs), step)]
    half = len(ranges) // 2
    assert store.apply_ranges("s:0", None, ranges[:half], 5.0) == ranges[half - 1].end
    # a stale writer (expected watermark behind) changes nothing, and nor does a replay
    assert store.apply_ranges("s:0", 0, ranges[:half], 5.0) == ranges[half - 1].end
    assert store.apply_ranges("s:0", ranges[half - 1].end, ranges[half:], 5.0) == len(txs)
    frauds = [(t.terminal_id or "", t.event_time_s or 0.0)
              for t, f in zip(txs, fraud, strict=True) if f]
    label_ranges = [OffsetRange(lo, min(lo + 100, len(frauds)), (), frauds[lo:lo + 100])
                    for lo in range(0, len(frauds), 100)]
    assert store.apply_ranges("l:0", None, label_ranges, 5.0) == len(frauds)
    client.script_flush()  # the script is loaded again
    assert store.apply_ranges("l:0", 0, label_ranges, 5.0) == len(frauds)
    assert store.watermarks(["s:0", "l:0"], 1.0) == [len(txs), len(frauds)]
    rings = {k: v for k, v in _rings(client, "test:once").items() if b":ring:" in k}
    assert rings == _rings(client, "test:plain")
    assert 0 < client.ttl("test:once:applied:s:0") <= store._ttl_s


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux only")
def test_a_tcp_connection_takes_quick_acks_and_the_store_answers_the_same_without(
        redis_url: str) -> None:
    client = _client(redis_url)
    conn = client.connection_pool.get_connection()
    try:
        assert ack_promptly(conn)  # a real pooled TCP connection accepts the option
    finally:
        client.connection_pool.release(conn)
    data = simulate(SimConfig(n_customers=40, n_terminals=80, n_days=12), seed=5)
    quick = RedisFeatureStore(client, prefix="test:quickack")
    plain = RedisFeatureStore(_client(redis_url), prefix="test:quickack", quick_ack=False)
    features = _stream(quick, data, 300)
    txs = to_transactions(data)
    np.testing.assert_array_equal(quick.fetch(txs, 5.0)[0], plain.fetch(txs, 5.0)[0])
    np.testing.assert_array_equal(features, _offline(data))


def test_an_empty_range_from_none_claims_a_watermark_once(redis_url: str) -> None:
    from scorers.ports import OffsetRange

    store = RedisFeatureStore(_client(redis_url), prefix="test:claim")
    assert store.watermarks(["t:0"], 1.0) == [None]
    assert store.apply_ranges("t:0", None, [OffsetRange(40, 40)], 1.0) == 40
    # a second claim (another owner, or a stale "none") changes nothing
    assert store.apply_ranges("t:0", None, [OffsetRange(90, 90)], 1.0) == 40
    assert store.watermarks(["t:0"], 1.0) == [40]
