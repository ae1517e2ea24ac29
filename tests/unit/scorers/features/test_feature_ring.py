"""The Redis ring layout's pure parts: packing writes, decoding rings, selecting windows."""

from __future__ import annotations

import dataclasses
import socket

import numpy as np
import pytest

from scorers.feature_ring import (
    RING_BYTES,
    RING_SLOTS,
    SLOT_DTYPE,
    ack_promptly,
    decode_rings,
    pack_commands,
    pack_writes,
    ring_window,
    round_trip,
)
from scorers.feature_store import InMemoryFeatureStore
from topics.schemas import Transaction


def _ring(cells: dict[int, tuple[int, int]]) -> bytes:
    """A ring holding (count, value) for the given days."""
    ring = np.zeros(RING_SLOTS, dtype=SLOT_DTYPE)
    for day, (n, v) in cells.items():
        ring[day % RING_SLOTS] = (day, n, v)
    return ring.tobytes()


def test_pack_writes_sums_per_key_and_day_in_day_order() -> None:
    codes = np.array([1, 0, 1, 1, 0], dtype=np.int64)
    entries = np.array([[7, 1, 100], [3, 1, 5], [5, 1, 10], [7, 1, 1], [3, 0, 1]],
                       dtype=np.int64)
    packed = pack_writes(codes, entries, 2)
    decoded = [np.frombuffer(p, dtype="<i8").reshape(-1, 3).tolist() for p in packed]
    assert decoded == [[[3, 1, 6]], [[5, 1, 10], [7, 2, 101]]]
    assert pack_writes(np.zeros(0, np.int64), np.zeros((0, 3), np.int64), 0) == []


def test_decode_rings_reads_missing_keys_as_empty_and_rejects_bad_lengths() -> None:
    slots = decode_rings([_ring({100: (2, 3 << 33)}), None])
    assert slots.shape == (2 * RING_SLOTS, 4)
    assert slots[100 % RING_SLOTS].tolist() == [100, 2, 0, 3 << 1]  # value: low, high word
    assert not slots[RING_SLOTS:].any()
    with pytest.raises(ValueError, match="feature ring"):
        decode_rings([b"x" * (RING_BYTES - 1)])


def test_ring_window_counts_only_slots_holding_the_wanted_day() -> None:
    slots = decode_rings([_ring({100: (2, 30), 99 + RING_SLOTS: (5, 50)}),
                          _ring({98: (1, -(1 << 40))})])
    days = np.array([[98, 99, 100], [98, 99, 100]], dtype=np.int64)
    window = ring_window(slots, np.array([0, 1], dtype=np.int64), days)
    assert window.tolist() == [[[0, 0], [0, 0], [2, 30]],  # day 99's slot holds day 163
                               [[1, -(1 << 40)], [0, 0], [0, 0]]]


def test_pack_commands_is_resp() -> None:
    assert pack_commands([("MGET", "k\u00e9", b"\x00b", 12)]) == (
        b"*4\r\n$4\r\nMGET\r\n$3\r\nk\xc3\xa9\r\n$2\r\n\x00b\r\n$2\r\n12\r\n")


def test_event_times_beyond_int32_days_are_unavailable() -> None:
    tx = Transaction("a", 86_400.0 * 3, "c", "t", 1.0, "EUR", "5411", False, True, 1, "pos")
    batch = [tx, dataclasses.replace(tx, event_time_s=1e300),
             dataclasses.replace(tx, event_time_s=-float("inf"))]
    _, available = InMemoryFeatureStore().fetch(batch, 1.0)
    assert available.tolist() == [True, False, False]


# -- round trips: replies acknowledged at once ------------------------------------------------
class _Sock:
    def __init__(self, log: list[tuple[object, ...]], fail: bool = False) -> None:
        self.log, self.fail = log, fail

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if self.fail:
            raise OSError(95, "Operation not supported")
        self.log.append(("setsockopt", level, option, value))


class _Conn:
    def __init__(self, log: list[tuple[object, ...]], sock: _Sock | None) -> None:
        self.log, self._sock = log, sock

    def send_packed_command(self, parts: list[bytes]) -> None:
        self.log.append(("send",))

    def read_response(self, timeout: float) -> bytes:
        self.log.append(("read",))
        return b"OK"

    def disconnect(self) -> None:
        self.log.append(("disconnect",))


class _Pool:
    def __init__(self, conn: _Conn) -> None:
        self.conn = conn

    def get_connection(self) -> _Conn:
        return self.conn

    def release(self, conn: _Conn) -> None:
        pass


class _Client:
    def __init__(self, conn: _Conn) -> None:
        self.connection_pool = _Pool(conn)


needs_quickack = pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"),
                                    reason="TCP_QUICKACK is Linux only")


@needs_quickack
def test_a_round_trip_asks_for_quick_acks_after_sending_and_before_reading() -> None:
    log: list[tuple[object, ...]] = []
    replies = round_trip(_Client(_Conn(log, _Sock(log))), [("GET", "a"), ("GET", "b")], 1.0)
    assert replies == [b"OK", b"OK"]
    assert log == [("send",), ("setsockopt", socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1),
                   ("read",), ("read",)]


def test_quick_acks_can_be_turned_off_and_are_skipped_where_they_do_not_apply() -> None:
    log: list[tuple[object, ...]] = []
    round_trip(_Client(_Conn(log, _Sock(log))), [("GET", "a")], 1.0, quick_ack=False)
    assert log == [("send",), ("read",)]
    # a unix socket refuses the option, a closed connection has no socket: reads go on
    log.clear()
    assert round_trip(_Client(_Conn(log, _Sock(log, fail=True))), [("GET", "a")], 1.0) == [b"OK"]
    assert round_trip(_Client(_Conn(log, None)), [("GET", "a")], 1.0) == [b"OK"]
    assert log == [("send",), ("read",), ("send",), ("read",)]
    assert ack_promptly(_Conn(log, None)) is False
    assert ack_promptly(_Conn(log, _Sock(log, fail=True))) is False
