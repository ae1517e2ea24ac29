"""The feature store: online aggregates kept as daily buckets, in memory or in Redis.

Layout (Redis; the in-memory backend mirrors it): one hash per customer,
`{prefix}:c:{customer_id}`, fields `{day}:n` (transactions) and `{day}:s` (amount
in cents); one hash per terminal, `{prefix}:t:{terminal_id}`, fields `{day}:n` and
`{day}:f` (frauds, from `record_labels`). `day` is the UTC epoch day. A batch
fetch is one pipelined round trip of HMGETs (30 days x 2 fields per distinct
customer-day and terminal-day); the windows are summed in numpy and finished by
`scorers.features.online.online_features_from_sums`, the function training uses.

Stream-order semantics (same as the offline function): an event sees the earlier
events of its batch (added in numpy) and everything `update` folded in before;
never itself. Call `update` after scoring each batch, and `record_labels` when
labels arrive (the terminal windows read only days at least 8 days old).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from scorers.features.online import (
    CUSTOMER_SPAN_DAYS,
    CUSTOMER_WINDOWS_DAYS,
    DAY_S,
    ONLINE_FEATURE_NAMES,
    TERMINAL_DELAY_DAYS,
    TERMINAL_SPAN_DAYS,
    TERMINAL_WINDOWS_DAYS,
    WindowSums,
    amount_cents,
    online_features_from_sums,
)
from scorers.ports import BoolVector, FloatMatrix
from topics.schemas import Transaction

DEFAULT_TTL_S: Final = 45 * DAY_S  # longer than the oldest bucket any window reads

Request = tuple[str, tuple[str, ...]]
Increment = tuple[str, str, int]


class HashBackend(Protocol):
    """Integer hash fields: read many (missing = 0) and increment many, each in one trip."""

    def read_many(self, requests: Sequence[Request], timeout_s: float) -> list[list[int]]: ...

    def incr_many(self, increments: Sequence[Increment], timeout_s: float) -> None: ...


class MemoryBackend:
    def __init__(self) -> None:
        self._data: dict[str, dict[str, int]] = {}

    def read_many(self, requests: Sequence[Request], timeout_s: float) -> list[list[int]]:
        empty: dict[str, int] = {}
        return [[self._data.get(key, empty).get(f, 0) for f in fields] for key, fields in requests]

    def incr_many(self, increments: Sequence[Increment], timeout_s: float) -> None:
        for key, field, by in increments:
            bucket = self._data.setdefault(key, {})
            bucket[field] = bucket.get(field, 0) + by


class RedisBackend:
    """Pipelined HMGET / HINCRBY on one pooled connection, reads bounded by `timeout_s`.

    Writes use the client's own socket timeout: create the client with
    `socket_timeout` and `socket_connect_timeout` set. Any failure raises.
    """

    def __init__(self, client: Any, ttl_s: int = DEFAULT_TTL_S) -> None:
        self._client = client
        self._ttl_s = ttl_s

    def _round_trip(self, commands: list[tuple[Any, ...]], timeout_s: float) -> list[Any]:
        if not commands:
            return []
        deadline = time.monotonic() + timeout_s
        pool = self._client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            replies = []
            for _ in commands:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"feature store round trip exceeded {timeout_s}s")
                replies.append(conn.read_response(timeout=remaining))
            return replies
        except BaseException:
            conn.disconnect()  # a half-read pipeline must not be reused
            raise
        finally:
            pool.release(conn)

    def read_many(self, requests: Sequence[Request], timeout_s: float) -> list[list[int]]:
        replies = self._round_trip([("HMGET", key, *fields) for key, fields in requests],
                                   timeout_s)
        return [[0 if v is None else int(v) for v in reply] for reply in replies]

    def incr_many(self, increments: Sequence[Increment], timeout_s: float) -> None:
        commands: list[tuple[Any, ...]] = [("HINCRBY", k, f, by) for k, f, by in increments]
        commands += [("EXPIRE", k, self._ttl_s) for k in sorted({k for k, _, _ in increments})]
        self._round_trip(commands, timeout_s)


class _Batch:
    """The columns of one batch the store needs; rows missing a key field are invalid."""

    def __init__(self, txs: Sequence[Transaction]) -> None:
        self.valid = np.array([t.event_time_s is not None and np.isfinite(t.event_time_s)
                               and t.customer_id is not None and t.terminal_id is not None
                               for t in txs], dtype=np.bool_)
        self.day = np.array([int(t.event_time_s // DAY_S) if ok and t.event_time_s is not None
                             else 0 for t, ok in zip(txs, self.valid, strict=True)],
                            dtype=np.int64)
        self.amount = np.array([np.nan if t.amount is None else t.amount for t in txs],
                               dtype=np.float64)
        self.cents = amount_cents(self.amount)
        self.customer = [t.customer_id or "" for t in txs]
        self.terminal = [t.terminal_id or "" for t in txs]


class BucketFeatureStore:
    """`scorers.ports.FeatureStore` over daily buckets in a `HashBackend`."""

    def __init__(self, backend: HashBackend, prefix: str = "rung:fs") -> None:
        self._backend = backend
        self._prefix = prefix

    def _ckey(self, customer_id: str) -> str:
        return f"{self._prefix}:c:{customer_id}"

    def _tkey(self, terminal_id: str) -> str:
        return f"{self._prefix}:t:{terminal_id}"

    def fetch(self, txs: Sequence[Transaction], timeout_s: float) -> tuple[FloatMatrix, BoolVector]:
        b = _Batch(txs)
        rows = np.flatnonzero(b.valid)
        out = np.zeros((len(txs), len(ONLINE_FEATURE_NAMES)), dtype=np.float32)
        if rows.size == 0:
            return out, b.valid
        cust_pairs = sorted({(b.customer[i], int(b.day[i])) for i in rows})
        term_pairs = sorted({(b.terminal[i], int(b.day[i])) for i in rows})
        c_days = [range(d - CUSTOMER_SPAN_DAYS + 1, d + 1) for _, d in cust_pairs]
        t_days = [range(d - TERMINAL_DELAY_DAYS - TERMINAL_SPAN_DAYS, d - TERMINAL_DELAY_DAYS)
                  for _, d in term_pairs]
        requests = [(self._ckey(c), tuple(f"{x}:{k}" for x in days for k in "ns"))
                    for (c, _), days in zip(cust_pairs, c_days, strict=True)]
        requests += [(self._tkey(t), tuple(f"{x}:{k}" for x in days for k in "nf"))
                     for (t, _), days in zip(term_pairs, t_days, strict=True)]
        replies = self._backend.read_many(requests, timeout_s)
        cust_vals = np.array(replies[:len(cust_pairs)], dtype=np.int64).reshape(
            len(cust_pairs), CUSTOMER_SPAN_DAYS, 2)  # oldest day first
        term_vals = np.array(replies[len(cust_pairs):], dtype=np.int64).reshape(
            len(term_pairs), TERMINAL_SPAN_DAYS, 2)
        c_index = {p: i for i, p in enumerate(cust_pairs)}
        t_index = {p: i for i, p in enumerate(term_pairs)}
        ci = np.array([c_index[(b.customer[i], int(b.day[i]))] for i in rows], dtype=np.int64)
        ti = np.array([t_index[(b.terminal[i], int(b.day[i]))] for i in rows], dtype=np.int64)
        sums = _stored_sums(cust_vals[ci], term_vals[ti])
        _add_earlier_in_batch(sums, [b.customer[i] for i in rows], b.day[rows], b.cents[rows])
        out[rows] = online_features_from_sums(sums, b.amount[rows])
        return out, b.valid

    def update(self, txs: Sequence[Transaction], timeout_s: float) -> None:
        b = _Batch(txs)
        incr: Counter[tuple[str, str]] = Counter()
        for i in np.flatnonzero(b.valid):
            day, ck = int(b.day[i]), self._ckey(b.customer[i])
            incr[(ck, f"{day}:n")] += 1
            incr[(ck, f"{day}:s")] += int(b.cents[i])
            incr[(self._tkey(b.terminal[i]), f"{day}:n")] += 1
        self._backend.incr_many([(k, f, n) for (k, f), n in sorted(incr.items())], timeout_s)

    def record_labels(self, txs: Sequence[Transaction],
                      is_fraud: Sequence[bool] | npt.NDArray[np.bool_],
                      timeout_s: float) -> None:
        """Fold known labels into the terminal fraud counts (only frauds are written)."""
        b = _Batch(txs)
        fraud = np.asarray(is_fraud, dtype=np.bool_)
        if fraud.shape[0] != len(txs):
            raise ValueError(f"{len(txs)} transactions but {fraud.shape[0]} labels")
        incr: Counter[tuple[str, str]] = Counter()
        for i in np.flatnonzero(b.valid & fraud):
            incr[(self._tkey(b.terminal[i]), f"{int(b.day[i])}:f")] += 1
        self._backend.incr_many([(k, f, n) for (k, f), n in sorted(incr.items())], timeout_s)


def _stored_sums(cust: npt.NDArray[np.int64], term: npt.NDArray[np.int64]) -> WindowSums:
    """cust: (n, 30 days oldest first, [count, cents]); term: (n, 30 days, [count, frauds])."""
    cc = np.stack([cust[:, -w:, 0].sum(axis=1) for w in CUSTOMER_WINDOWS_DAYS], axis=1)
    cs = np.stack([cust[:, -w:, 1].sum(axis=1) for w in CUSTOMER_WINDOWS_DAYS], axis=1)
    tc = np.stack([term[:, -w:, 0].sum(axis=1) for w in TERMINAL_WINDOWS_DAYS], axis=1)
    tf = np.stack([term[:, -w:, 1].sum(axis=1) for w in TERMINAL_WINDOWS_DAYS], axis=1)
    return WindowSums(cc, cs, tc, tf)


def _add_earlier_in_batch(sums: WindowSums, customers: list[str],
                          day: npt.NDArray[np.int64], cents: npt.NDArray[np.int64]) -> None:
    """Add the batch's own earlier rows to the customer windows, in place."""
    codes = np.unique(np.array(customers, dtype=object), return_inverse=True)[1].ravel()
    for lo in range(0, codes.shape[0], 1024):
        hi = min(lo + 1024, codes.shape[0])
        same = codes[lo:hi, None] == codes[None, :hi]
        earlier = np.arange(hi)[None, :] < np.arange(lo, hi)[:, None]
        lag = day[lo:hi, None] - day[None, :hi]
        for k, w in enumerate(CUSTOMER_WINDOWS_DAYS):
            m = same & earlier & (lag >= 0) & (lag < w)
            sums.customer_count[lo:hi, k] += m.sum(axis=1)
            sums.customer_cents[lo:hi, k] += m.astype(np.int64) @ cents[:hi]


class InMemoryFeatureStore(BucketFeatureStore):
    """The feature store in process memory: tests, the demo without Redis."""

    def __init__(self, prefix: str = "rung:fs") -> None:
        super().__init__(MemoryBackend(), prefix)


class RedisFeatureStore(BucketFeatureStore):
    """The feature store in Redis (redis-py client; keys expire after `ttl_s`)."""

    def __init__(self, client: Any, prefix: str = "rung:fs", ttl_s: int = DEFAULT_TTL_S) -> None:
        super().__init__(RedisBackend(client, ttl_s), prefix)
