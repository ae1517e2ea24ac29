"""The Redis layout of the feature store: one ring of daily buckets per entity.

A ring is a Redis string of `RING_SLOTS` slots, 16 bytes each, little-endian:
int32 day, int32 count, int64 value; the bucket of day d sits in slot
d % RING_SLOTS. Reads decode MGET replies with numpy (`decode_rings`,
`ring_window`: a slot counts only if it holds the wanted day). Writes are packed
per entity as int64 (day, count, value) triples (`pack_writes`) and applied by
one Lua script, `MERGE_LUA` (or `APPLY_LUA`, the same merge guarded by a source
partition's watermark: see `scorers.feature_store`), atomic per call: same day -> add; an empty slot or
one holding an older day -> reset to the new day; a slot holding a newer day ->
the write is dropped (it is older than any window the slot still serves). The
final state is thus independent of the order of the writes. `round_trip` sends
many commands on one pooled connection and bounds the wait for their replies.
The store itself (`RedisFeatureStore`) lives in `scorers.feature_store`.
"""

from __future__ import annotations

import hashlib
import socket
import time
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from redis.exceptions import ResponseError

RING_SLOTS: Final = 64  # > the 38 days any window reads back, plus room for late events
SLOT_DTYPE: Final = np.dtype([("day", "<i4"), ("n", "<i4"), ("v", "<i8")])
RING_BYTES: Final = RING_SLOTS * SLOT_DTYPE.itemsize
KEYS_PER_CALL: Final = 512  # bounds the time one script call holds Redis
_EMPTY_RING: Final = bytes(RING_BYTES)
_TRIPLE: Final = np.dtype("<i8")


def _merge_lua(first_key: int, first_arg: int) -> str:
    """Lua merging packed writes ARGV[first_arg + i] into ring KEYS[first_key + i], each
    ring's TTL from ARGV[1]."""
    return f"""
local zero = string.rep('\\0', {RING_BYTES})
for i = {first_key}, #KEYS do
  local key = KEYS[i]
  if redis.call('STRLEN', key) ~= {RING_BYTES} then redis.call('SET', key, zero) end
  local writes = ARGV[i - {first_key} + {first_arg}]
  for pos = 1, #writes, 24 do
    local day, n, v = struct.unpack('<i8i8i8', writes, pos)
    local off = (day % {RING_SLOTS}) * {SLOT_DTYPE.itemsize}
    local sday, sn, sv = struct.unpack('<i4i4i8', redis.call('GETRANGE', key, off, off + 15))
    if sday == day then
      redis.call('SETRANGE', key, off + 4, struct.pack('<i4i8', sn + n, sv + v))
    elseif sday < day or (sn == 0 and sv == 0) then
      redis.call('SETRANGE', key, off, struct.pack('<i4i4i8', day, n, v))
    end
  end
  redis.call('EXPIRE', key, ARGV[1])
end
"""


# KEYS: entity rings; ARGV[1]: TTL seconds; ARGV[1 + i]: packed int64 (day, count, value)
# triples for KEYS[i].
MERGE_LUA: Final = _merge_lua(1, 2) + "return #KEYS\n"
MERGE_SHA: Final = hashlib.sha1(MERGE_LUA.encode()).hexdigest()

# The exactly-once variant (`scorers.feature_store`, "Applying a partition exactly once").
# KEYS[1]: the source partition's watermark (the next offset to apply); KEYS[2..]: rings.
# ARGV[1]: TTL seconds; ARGV[2]: the watermark the caller planned from (-1: none stored);
# ARGV[3]: the new watermark; ARGV[3 + i]: packed triples for KEYS[1 + i].
# Applies everything and stores the new watermark only if the stored one is the expected
# one; returns the watermark stored after the call (-1: none) and whether it applied.
APPLY_LUA: Final = """
local stored = tonumber(redis.call('GET', KEYS[1]) or '-1')
if stored ~= tonumber(ARGV[2]) then return {0, stored} end
""" + _merge_lua(2, 4) + """
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[1])
return {1, tonumber(ARGV[3])}
"""
APPLY_SHA: Final = hashlib.sha1(APPLY_LUA.encode()).hexdigest()


def decode_rings(blobs: list[bytes | None]) -> npt.NDArray[np.int32]:
    """The slots in MGET replies as int32 words (day, count, value low, value high), one
    row per slot: row `entity * RING_SLOTS + day % RING_SLOTS`. A missing key is empty."""
    for blob in blobs:
        if blob is not None and len(blob) != RING_BYTES:
            raise ValueError(f"feature ring of {len(blob)} bytes, expected {RING_BYTES}")
    joined = b"".join(_EMPTY_RING if blob is None else blob for blob in blobs)
    return np.frombuffer(joined, dtype="<i4").reshape(-1, 4)


def ring_window(slots: npt.NDArray[np.int32], entity: npt.NDArray[np.int64],
                days: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """(rows, days, [count, value]): row r's entity `entity[r]` on days `days[r]`."""
    cells = slots[entity[:, None] * RING_SLOTS + days % RING_SLOTS]  # (rows, days, 4)
    hit = cells[..., 0] == days
    out = np.empty((*hit.shape, 2), dtype=np.int64)
    np.multiply(cells[..., 1], hit, out=out[..., 0])
    np.multiply(cells[..., 2:].copy().view("<i8")[..., 0], hit, out=out[..., 1])
    return out


def pack_writes(codes: npt.NDArray[np.int64], entries: npt.NDArray[np.int64],
                n_keys: int) -> list[bytes]:
    """Per key code 0..n_keys-1 (each present), its (day, count, value) `entries`
    summed per day and packed as int64 triples, days ascending."""
    if codes.size == 0:
        return []
    order = np.lexsort((entries[:, 0], codes))
    code, day = codes[order], entries[order, 0]
    start = np.flatnonzero(np.r_[True, (code[1:] != code[:-1]) | (day[1:] != day[:-1])])
    sums = np.add.reduceat(entries[order, 1:], start, axis=0)
    packed = np.column_stack([day[start], sums]).astype(_TRIPLE).tobytes()
    bounds = np.searchsorted(code[start], np.arange(n_keys + 1)) * 3 * _TRIPLE.itemsize
    return [packed[lo:hi] for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(),
                                             strict=True)]


def pack_commands(commands: list[tuple[str | bytes | int, ...]]) -> bytes:
    """RESP encoding of `commands` (str as UTF-8), cheaper than redis-py's for many args."""
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            raw = arg.encode() if isinstance(arg, str) else b"%d" % arg if isinstance(
                arg, int) else arg
            out.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(out)


def round_trip(client: Any, commands: list[tuple[str | bytes | int, ...]],
               timeout_s: float, *, quick_ack: bool = True) -> list[Any]:
    """Send `commands` in one write on one pooled connection and read every reply.

    The replies must all arrive within `timeout_s`, else TimeoutError and the
    connection is dropped (a half-read pipeline must not be reused); sending is
    bounded by the client's socket timeout. An error reply comes back as its
    `ResponseError`, not raised. With `quick_ack` the replies are acknowledged as they
    arrive (`ack_promptly`).
    """
    deadline = time.monotonic() + timeout_s
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([pack_commands(commands)])
        if quick_ack:
            ack_promptly(conn)
        replies: list[Any] = []
        for _ in commands:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"feature store round trip exceeded {timeout_s}s")
            try:
                replies.append(conn.read_response(timeout=remaining))
            except ResponseError as err:
                replies.append(err)
        return replies
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


_TCP_QUICKACK: Final = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def ack_promptly(conn: Any) -> bool:
    """Ask the kernel to acknowledge what arrives on `conn`'s socket at once, not after
    its delayed-ACK timer (Linux `TCP_QUICKACK`, set after each request: a send puts the
    socket back in delayed mode). Why: a fetch's reply is ~1 MB (one 1 KiB ring per
    entity); a connection that sends small requests and reads replies looks interactive
    to Linux, which then delays ACKs up to 40 ms, and Redis, its congestion window shrunk
    after the connection sat idle, stops mid-reply until the ACK comes. Measured: ~1% of
    fetches stalled 40 ms mid-reply and timed out (whole batches to the fallback) in
    healthy runs; 18 -> 0 and 10 -> 1 with this in two comparisons (docs/budgets.md).
    False where it does not apply (not Linux, not TCP, no socket)."""
    sock = getattr(conn, "_sock", None)
    if _TCP_QUICKACK is None or sock is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
    except OSError:  # a unix socket, or a closed one: nothing to speed up
        return False
    return True
