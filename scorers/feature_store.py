"""The feature store: online aggregates kept as daily buckets, in memory or in Redis.

In memory (`InMemoryFeatureStore`): a dict of counters per customer and terminal,
keyed `{day}:n` / `{day}:s` (customer: transactions, cents) and `{day}:n` /
`{day}:f` (terminal: transactions, frauds from `record_labels`).

In Redis (`RedisFeatureStore`): one string per entity, `{prefix}:ring:c:{customer}`
and `{prefix}:ring:t:{terminal}`, a ring of 64 daily buckets (day, count, value:
cents for customers, frauds for terminals) laid out in `scorers.feature_ring`. A
batch fetch is one MGET of its distinct entities decoded with numpy; writes are one
round trip of an atomic Lua merge, safe with many workers writing at once. Features
are exact while events arrive less than 64 - 38 = 26 days out of order (older
buckets are overwritten). `bulk_load` warms the store with many events at once.

Both sum the windows in numpy (`day` is the UTC epoch day) and finish them with
`scorers.features.online.online_features_from_sums`, the function training uses.

Stream-order semantics (same as the offline function): an event sees the earlier
events of its batch (added in numpy) and everything applied before; never itself.

Applying a partition exactly once
---------------------------------
The live path writes through `apply_ranges(source, expected, ranges)`, never
`update`: `source` names one Kafka partition (`<topic>:<partition>`), each
`OffsetRange` covers the records [start, end) of it (its decoded events, or the
(terminal, event time) of its fraud labels; records that add nothing, such as dead
letters, are covered all the same). Each range is one script call (`APPLY_LUA`) that
merges its writes and moves the partition's watermark `{prefix}:applied:{source}`
(the next offset to apply) from `start` to `end` atomically, and does nothing unless
the stored watermark is the `expected` one the caller planned from. A redelivered,
rewound or re-read record lies below the watermark and is never planned again; two
writers racing on one partition (a zombie and its successor) cannot both apply.

Why (partition, offset) and not transaction ids: a partition's offsets are a total
order, so "applied" is one integer per partition, stored in the same key space and
the same script call as the aggregates, O(1) to check and never growing. Transaction
ids would need a set of every id seen (bounded only by a TTL shorter than the
windows it protects) and a lookup per record, and a duplicate id sent twice by a
producer would be dropped although both events were scored. The watermark also says
exactly what is missing, [watermark, first offset of a batch), so a failed update is
re-read from Kafka later (`stream_app.features`), never kept in memory.

`update` and `record_labels` (and `bulk_load`) are the plain additive merges: for
warm-ups, benchmarks and tests, never for the live stream.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
from redis.exceptions import NoScriptError

from scorers.feature_ring import (
    APPLY_LUA,
    APPLY_SHA,
    KEYS_PER_CALL,
    MERGE_LUA,
    MERGE_SHA,
    decode_rings,
    pack_writes,
    ring_window,
    round_trip,
)
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
from scorers.ports import BoolVector, FloatMatrix, OffsetRange
from topics.schemas import Transaction

DEFAULT_TTL_S: Final = 45 * DAY_S  # longer than the oldest bucket any window reads

_MAX_ABS_TIME_S: Final = float(2**31 - 1) * DAY_S  # days fit in int32; NaN and inf fail too

Request = tuple[str, tuple[str, ...]]
Increment = tuple[str, str, int]
NO_WATERMARK: Final = -1  # what the script and `apply_ranges` call "none stored yet"
# Bounds on one `OffsetRange` (one script call touches at most KEYS_PER_CALL rings).
EVENTS_PER_RANGE: Final = KEYS_PER_CALL // 2  # an event touches two rings
FRAUDS_PER_RANGE: Final = KEYS_PER_CALL  # a fraud label touches one


def check_chain(expected: int | None, ranges: Sequence[OffsetRange]) -> None:
    """Ranges must follow each other from `expected` (any start when None)."""
    at = expected
    for r in ranges:
        if at is not None and r.start != at:
            raise ValueError(f"range starts at {r.start}, expected {at}")
        at = r.end


def _valid_frauds(frauds: Sequence[tuple[str, float]]) -> list[tuple[str, int]]:
    """(terminal, day) of the fraud labels a terminal and a usable time attribute."""
    return [(t, int(ts // DAY_S)) for t, ts in frauds
            if t and ts is not None and abs(ts) < _MAX_ABS_TIME_S]


def _start_fetch(txs: Sequence[Transaction]) -> tuple[_Batch, npt.NDArray[np.intp], FloatMatrix]:
    """The batch's columns, its rows with usable keys, and a zeroed feature matrix."""
    b = _Batch(txs)
    return b, np.flatnonzero(b.valid), np.zeros((len(txs), len(ONLINE_FEATURE_NAMES)),
                                                dtype=np.float32)


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


class _Batch:
    """The columns of one batch the store needs; rows missing a key field are invalid."""

    def __init__(self, txs: Sequence[Transaction]) -> None:
        self.valid = np.array([t.event_time_s is not None
                               and abs(t.event_time_s) < _MAX_ABS_TIME_S
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
        self._watermarks: dict[str, int] = {}  # per source; atomic only within one process

    def _ckey(self, customer_id: str) -> str:
        return f"{self._prefix}:c:{customer_id}"

    def _tkey(self, terminal_id: str) -> str:
        return f"{self._prefix}:t:{terminal_id}"

    def fetch(self, txs: Sequence[Transaction], timeout_s: float) -> tuple[FloatMatrix, BoolVector]:
        b, rows, out = _start_fetch(txs)
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
        customer = _codes([b.customer[i] for i in rows], {})
        out[rows] = _features(b, rows, customer, cust_vals[ci], term_vals[ti])
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


    def watermarks(self, sources: Sequence[str], timeout_s: float) -> list[int | None]:
        return [self._watermarks.get(src) for src in sources]

    def apply_ranges(self, source: str, expected: int | None, ranges: Sequence[OffsetRange],
                     timeout_s: float) -> int | None:
        """See the module docstring; returns the watermark stored afterwards."""
        check_chain(expected, ranges)
        for r in ranges:
            if self._watermarks.get(source, NO_WATERMARK) != (
                    NO_WATERMARK if expected is None else expected):
                break
            self.update(r.events, timeout_s)
            incr: Counter[tuple[str, str]] = Counter(
                (self._tkey(t), f"{day}:f") for t, day in _valid_frauds(r.frauds))
            self._backend.incr_many([(k, f, n) for (k, f), n in sorted(incr.items())],
                                    timeout_s)
            self._watermarks[source] = expected = r.end
        return self._watermarks.get(source)


def _features(b: _Batch, rows: npt.NDArray[np.int64], customer: npt.NDArray[np.int64],
              cust: npt.NDArray[np.int64], term: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    """Online features of `rows` (their customers coded 0..n-1) from their stored
    windows (see `_stored_sums`) and the batch's earlier rows."""
    sums = _stored_sums(cust, term)
    _add_earlier_in_batch(sums, customer, b.day[rows], b.cents[rows])
    return online_features_from_sums(sums, b.amount[rows])


def _stored_sums(cust: npt.NDArray[np.int64], term: npt.NDArray[np.int64]) -> WindowSums:
    """cust: (n, 30 days oldest first, [count, cents]); term: (n, 30 days, [count, frauds])."""
    cc = np.stack([cust[:, -w:, 0].sum(axis=1) for w in CUSTOMER_WINDOWS_DAYS], axis=1)
    cs = np.stack([cust[:, -w:, 1].sum(axis=1) for w in CUSTOMER_WINDOWS_DAYS], axis=1)
    tc = np.stack([term[:, -w:, 0].sum(axis=1) for w in TERMINAL_WINDOWS_DAYS], axis=1)
    tf = np.stack([term[:, -w:, 1].sum(axis=1) for w in TERMINAL_WINDOWS_DAYS], axis=1)
    return WindowSums(cc, cs, tc, tf)


def _add_earlier_in_batch(sums: WindowSums, customer: npt.NDArray[np.int64],
                          day: npt.NDArray[np.int64], cents: npt.NDArray[np.int64]) -> None:
    """Add the batch's own earlier rows to the customer windows, in place.

    `customer` codes each row's customer as an integer (0..n-1); only rows whose
    customer appears more than once in the batch can change. The pairs (later row,
    earlier row of the same customer) are enumerated group by group, so the work is
    the sum of the squared group sizes, not the square of the batch (a 5,000-record
    replay batch over 1,000 customers: ~25,000 pairs instead of 12.5 million).
    """
    rep = np.flatnonzero(np.bincount(customer)[customer] > 1)
    if rep.shape[0] == 0:
        return
    order = rep[np.argsort(customer[rep], kind="stable")]  # grouped, row order inside
    code = customer[order]
    m = code.shape[0]
    starts = np.flatnonzero(np.concatenate(([True], code[1:] != code[:-1])))
    sizes = np.append(starts[1:], m).astype(np.int64) - starts
    g0 = np.repeat(starts, sizes)
    earlier = np.arange(m) - g0  # rows of the same customer before each one
    total = int(earlier.sum())
    later_pos = np.repeat(np.arange(m), earlier)
    first = np.cumsum(earlier) - earlier
    earlier_pos = np.repeat(g0 - first, earlier) + np.arange(total)
    i_row, j_row = order[later_pos], order[earlier_pos]
    lag = day[i_row] - day[j_row]
    for k, w in enumerate(CUSTOMER_WINDOWS_DAYS):
        hit = (lag >= 0) & (lag < w)
        np.add.at(sums.customer_count[:, k], i_row[hit], 1)
        np.add.at(sums.customer_cents[:, k], i_row[hit], cents[j_row[hit]])


class InMemoryFeatureStore(BucketFeatureStore):
    """The feature store in process memory: tests, the demo without Redis."""

    def __init__(self, prefix: str = "rung:fs") -> None:
        super().__init__(MemoryBackend(), prefix)



class RedisFeatureStore:
    """`scorers.ports.FeatureStore` in Redis, one ring of daily buckets per entity
    (`scorers.feature_ring`).

    `client` is a redis-py client; create it with `socket_timeout` and
    `socket_connect_timeout` set (they bound sending). Each call is one round trip
    on one pooled connection, its replies bounded by `timeout_s`; any failure
    raises. Keys expire `ttl_s` after their last write.
    """

    def __init__(self, client: Any, prefix: str = "rung:fs", ttl_s: int = DEFAULT_TTL_S,
                 *, quick_ack: bool = True) -> None:
        self._client = client
        self._quick_ack = quick_ack  # see feature_ring.ack_promptly
        self._prefix = prefix
        self._ttl_s = int(ttl_s)
        self._script_loaded = False
        self._apply_loaded = False

    def _watermark_key(self, source: str) -> str:
        return f"{self._prefix}:applied:{source}"

    def _keys(self, kind: str, index: dict[str, int]) -> list[str]:
        return [f"{self._prefix}:ring:{kind}:{entity}" for entity in index]

    def fetch(self, txs: Sequence[Transaction], timeout_s: float) -> tuple[FloatMatrix, BoolVector]:
        b, rows, out = _start_fetch(txs)
        if rows.size == 0:
            return out, b.valid
        c_index: dict[str, int] = {}
        t_index: dict[str, int] = {}
        ci = _codes([b.customer[i] for i in rows], c_index)
        ti = _codes([b.terminal[i] for i in rows], t_index) + len(c_index)
        keys = self._keys("c", c_index) + self._keys("t", t_index)
        [blobs] = round_trip(self._client, [("MGET", *keys)], timeout_s,
                             quick_ack=self._quick_ack)
        if isinstance(blobs, Exception):
            raise blobs
        rings = decode_rings(blobs)
        day = b.day[rows, None]
        cust = ring_window(rings, ci, day + np.arange(1 - CUSTOMER_SPAN_DAYS, 1))
        first = -TERMINAL_DELAY_DAYS - TERMINAL_SPAN_DAYS
        term = ring_window(rings, ti, day + np.arange(first, -TERMINAL_DELAY_DAYS))
        out[rows] = _features(b, rows, ci, cust, term)
        return out, b.valid

    def update(self, txs: Sequence[Transaction], timeout_s: float) -> None:
        """Fold scored events into the customer and terminal counts."""
        self._merge(self._writes(_Batch(txs), None), timeout_s)

    def record_labels(self, txs: Sequence[Transaction],
                      is_fraud: Sequence[bool] | npt.NDArray[np.bool_],
                      timeout_s: float) -> None:
        """Fold known labels into the terminal fraud counts (only frauds are written)."""
        b = _Batch(txs)
        self._merge(self._writes(b, _labels(b, is_fraud), events=False), timeout_s)

    def bulk_load(self, txs: Sequence[Transaction],
                  is_fraud: Sequence[bool] | npt.NDArray[np.bool_], timeout_s: float) -> None:
        """`update` and `record_labels` for many events at once (a warm-up).

        Merged into what is stored, with the same result as the per-batch calls;
        the events are summed per entity and day in numpy first. `timeout_s`
        bounds each round trip (of up to 16 * KEYS_PER_CALL entities).
        """
        b = _Batch(txs)
        keys, blobs = self._writes(b, _labels(b, is_fraud))
        step = 16 * KEYS_PER_CALL
        for lo in range(0, len(keys), step):
            self._merge((keys[lo:lo + step], blobs[lo:lo + step]), timeout_s)

    def watermarks(self, sources: Sequence[str], timeout_s: float) -> list[int | None]:
        """The stored watermark (next offset to apply) of each source, None if none."""
        if not sources:
            return []
        [values] = round_trip(self._client, [("MGET", *map(self._watermark_key, sources))],
                              timeout_s, quick_ack=self._quick_ack)
        if isinstance(values, Exception):
            raise values
        return [None if v is None else int(v) for v in values]

    def apply_ranges(self, source: str, expected: int | None, ranges: Sequence[OffsetRange],
                     timeout_s: float) -> int | None:
        """Apply consecutive `ranges` of `source` from watermark `expected` (None: none
        stored), one `APPLY_LUA` call each, pipelined in one round trip: a call whose
        expected watermark is not the stored one changes nothing, and so do the ones
        after it. Returns the watermark stored afterwards (None: none)."""
        check_chain(expected, ranges)
        if not ranges:
            return expected
        wkey = self._watermark_key(source)
        calls: list[tuple[str | bytes | int, ...]] = []
        at = NO_WATERMARK if expected is None else expected
        for r in ranges:
            keys, blobs = self._range_writes(r)
            calls.append(("EVALSHA", APPLY_SHA, 1 + len(keys), wkey, *keys,
                          self._ttl_s, at, r.end, *blobs))
            at = r.end
        for _ in range(2):
            load: list[tuple[str | bytes | int, ...]] = (
                [] if self._apply_loaded else [("SCRIPT", "LOAD", APPLY_LUA)])
            replies = round_trip(self._client, load + calls, timeout_s,
                                 quick_ack=self._quick_ack)[len(load):]
            errors = [r for r in replies if isinstance(r, Exception)]
            if not errors:
                self._apply_loaded = True
                stored = int(replies[-1][1])
                return None if stored == NO_WATERMARK else stored
            if not all(isinstance(e, NoScriptError) for e in errors):
                raise errors[0]
            self._apply_loaded = False  # lost scripts: the calls before the error applied
            done = [r for r in replies if not isinstance(r, Exception)]
            if done:  # what applied is behind the watermark; the caller re-plans
                stored = int(done[-1][1])
                return None if stored == NO_WATERMARK else stored
        raise errors[0]

    def _range_writes(self, r: OffsetRange) -> tuple[list[str], list[bytes]]:
        """Keys and packed (day, count, value) sums per ring for one range."""
        b = _Batch(r.events)
        rows = np.flatnonzero(b.valid)
        frauds = _valid_frauds(r.frauds)
        c_index: dict[str, int] = {}
        t_index: dict[str, int] = {}
        cc = _codes([b.customer[i] for i in rows], c_index)
        tc = _codes([b.terminal[i] for i in rows] + [t for t, _ in frauds], t_index)
        ones, zeros = np.ones_like(rows), np.zeros_like(rows)
        entries = np.concatenate([
            np.stack([b.day[rows], ones, b.cents[rows]], axis=1),
            np.stack([b.day[rows], ones, zeros], axis=1),
            np.array([(day, 0, 1) for _, day in frauds], dtype=np.int64).reshape(-1, 3)])
        keys = self._keys("c", c_index) + self._keys("t", t_index)
        if len(keys) > KEYS_PER_CALL:
            raise ValueError(f"{len(keys)} rings in one range; at most {KEYS_PER_CALL}")
        return keys, pack_writes(np.concatenate([cc, tc + len(c_index)]), entries, len(keys))

    def _writes(self, b: _Batch, fraud: npt.NDArray[np.bool_] | None,
                events: bool = True) -> tuple[list[str], list[bytes]]:
        """Keys and packed (day, count, value) sums per entity: events and/or frauds."""
        rows = np.flatnonzero(b.valid)
        frows = rows[fraud[rows]] if fraud is not None else rows[:0]
        erows = rows if events else rows[:0]
        trows = np.concatenate([erows, frows])
        c_index: dict[str, int] = {}
        t_index: dict[str, int] = {}
        cc = _codes([b.customer[i] for i in erows], c_index)
        tc = _codes([b.terminal[i] for i in trows], t_index) + len(c_index)
        is_event = (np.arange(trows.size) < erows.size).astype(np.int64)
        entries = np.concatenate([
            np.stack([b.day[erows], np.ones_like(erows), b.cents[erows]], axis=1),
            np.stack([b.day[trows], is_event, 1 - is_event], axis=1)])
        keys = self._keys("c", c_index) + self._keys("t", t_index)
        return keys, pack_writes(np.concatenate([cc, tc]), entries, len(keys))

    def _merge(self, writes: tuple[list[str], list[bytes]], timeout_s: float) -> None:
        """Run the merge script over `writes` in one round trip (loading it first if needed)."""
        keys, blobs = writes
        if not keys:
            return
        calls: list[tuple[str | bytes | int, ...]] = [
            ("EVALSHA", MERGE_SHA, len(keys[lo:lo + KEYS_PER_CALL]),
             *keys[lo:lo + KEYS_PER_CALL], self._ttl_s, *blobs[lo:lo + KEYS_PER_CALL])
            for lo in range(0, len(keys), KEYS_PER_CALL)]
        for _ in range(2):
            load: list[tuple[str | bytes | int, ...]] = (
                [] if self._script_loaded else [("SCRIPT", "LOAD", MERGE_LUA)])
            errors = [r for r in round_trip(self._client, load + calls, timeout_s,
                                            quick_ack=self._quick_ack)
                      if isinstance(r, Exception)]
            if not errors:
                self._script_loaded = True
                return
            if len(errors) < len(calls) or not all(isinstance(e, NoScriptError) for e in errors):
                raise errors[0]
            self._script_loaded = False  # the server lost its scripts; nothing was applied
        raise errors[0]


def _codes(ids: list[str], index: dict[str, int]) -> npt.NDArray[np.int64]:
    """The position of each id in `index`, adding new ids in order of appearance."""
    return np.array([index.setdefault(k, len(index)) for k in ids], dtype=np.int64)


def _labels(b: _Batch, is_fraud: Sequence[bool] | npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    fraud = np.asarray(is_fraud, dtype=np.bool_)
    if fraud.shape != b.valid.shape:
        raise ValueError(f"{b.valid.shape[0]} transactions but {fraud.shape[0]} labels")
    return fraud
