"""The label ⨝ score join by transaction id, with bounded state.

One port, `JoinStore.offer(offers)`: each offer is one side (a score or a label) of one
transaction id. The store answers per offer:
- `pending`: kept until the other side comes (at most `ttl_s`, then forgotten);
- `joined`: the other side was waiting; its payload is returned, both sides are dropped and
  a small "joined" marker stays for `ttl_s`;
- `duplicate`: this side was seen before (redelivery after a restart, a second label for
  the same transaction) or the transaction was already joined — nothing to count.

So each transaction id is counted at most once while its marker lives, whatever Kafka
redelivers; a crash between the store's answer and the metric update loses that count
(at most once). Two implementations, one contract suite (tests/unit/stream_app/quality):
`MemoryJoinStore` (in process: bounded by entries and TTL; state dies with the process)
and `RedisJoinStore` (one hash per transaction id with a TTL, updated by one Lua script,
so restarts and several monitor instances share it).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import orjson
import redis

from stream_app.quality.outcomes import OutcomeCounts, ScoreFacts, outcome
from topics.schemas import Label, Score

Side = Literal["score", "label"]
Status = Literal["pending", "joined", "duplicate"]
DEFAULT_TTL_S: Final = 30 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Offer:
    transaction_id: str
    side: Side
    payload: bytes


@dataclass(frozen=True, slots=True)
class OfferResult:
    status: Status
    other: bytes | None = None  # the other side's payload when joined


class JoinStore(Protocol):
    def offer(self, offers: Sequence[Offer]) -> list[OfferResult]:
        """One result per offer, in order; offers are applied in order."""
        ...


def _other(side: Side) -> Side:
    return "label" if side == "score" else "score"


@dataclass(slots=True)
class _Entry:
    side: Side | Literal["joined"]
    payload: bytes
    expires_at_s: float


class MemoryJoinStore:
    """In-process join state: at most `max_entries` ids (oldest evicted first), each for
    `ttl_s` on the injected monotonic clock. For tests, dev and one-shot evaluation."""

    def __init__(self, ttl_s: float = DEFAULT_TTL_S, max_entries: int = 1_000_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries <= 0 or ttl_s <= 0:
            raise ValueError("ttl_s and max_entries must be positive")
        self._ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.evicted = 0  # dropped for room before their TTL
        self.expired = 0

    def __len__(self) -> int:
        return len(self._entries)

    def offer(self, offers: Sequence[Offer]) -> list[OfferResult]:
        now = self._clock()
        self._expire(now)
        return [self._one(o, now) for o in offers]

    def _one(self, o: Offer, now: float) -> OfferResult:
        entry = self._entries.get(o.transaction_id)
        if entry is not None and entry.expires_at_s <= now:
            del self._entries[o.transaction_id]
            self.expired += 1
            entry = None
        if entry is None:
            self._put(o.transaction_id, _Entry(o.side, o.payload, now + self._ttl_s))
            return OfferResult("pending")
        if entry.side != _other(o.side):  # same side again, or already joined
            return OfferResult("duplicate")
        self._entries.pop(o.transaction_id)
        self._put(o.transaction_id, _Entry("joined", b"", now + self._ttl_s))
        return OfferResult("joined", entry.payload)

    def _put(self, key: str, entry: _Entry) -> None:
        self._entries[key] = entry
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
            self.evicted += 1

    def _expire(self, now: float) -> None:
        # Entries are in insertion order and share one TTL, so expiry order too.
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires_at_s > now:
                return
            del self._entries[key]
            self.expired += 1


# KEYS[1] the transaction's hash; ARGV: my field, the other field, my payload, TTL (s).
_OFFER_LUA: Final = """
if redis.call('HEXISTS', KEYS[1], 'j') == 1 then return {'duplicate'} end
local other = redis.call('HGET', KEYS[1], ARGV[2])
if other then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'j', '1')
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return {'joined', other}
end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3]) == 0 then return {'duplicate'} end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {'pending'}
"""


class RedisJoinStore:
    """Join state in Redis: hash `<namespace>:<transaction id>` with fields `score`,
    `label` or `j` (joined), expiring `ttl_s` after its last change. One Lua script per
    offer, all offers of a batch in one pipeline round trip."""

    def __init__(self, client: redis.Redis, namespace: str = "rung:quality",
                 ttl_s: float = DEFAULT_TTL_S) -> None:
        self._client = client
        self._ns = namespace
        self._ttl = max(int(ttl_s), 1)
        self._script = client.register_script(_OFFER_LUA)

    def offer(self, offers: Sequence[Offer]) -> list[OfferResult]:
        if not offers:
            return []
        pipe = self._client.pipeline(transaction=False)
        for o in offers:
            self._script(keys=[f"{self._ns}:{o.transaction_id}"],
                         args=[o.side, _other(o.side), o.payload, self._ttl], client=pipe)
        return [_result(r) for r in pipe.execute()]


def _result(reply: list[bytes]) -> OfferResult:
    status = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    if status == "joined":
        return OfferResult("joined", bytes(reply[1]))
    if status in ("pending", "duplicate"):
        return OfferResult(status)  # type: ignore[arg-type]
    raise ValueError(f"unexpected join-store reply {reply!r}")


# --- the join itself: scores and labels in, outcomes per (tier, model_version) out ------------
def _encode_score(f: ScoreFacts) -> bytes:
    return orjson.dumps({"t": f.tier, "v": f.model_version, "s": f.score, "a": f.alert})


def _decode_score(data: bytes) -> ScoreFacts:
    obj = orjson.loads(data)
    return ScoreFacts(str(obj["t"]), str(obj["v"]), float(obj["s"]), bool(obj["a"]))


class JoinSink(Protocol):
    def joined(self, facts: ScoreFacts, fraud: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class AddReport:
    pending: int = 0
    joined: int = 0
    duplicate: int = 0


class LabelScoreJoin:
    """Feeds scores and labels through a `JoinStore`; each pair that joins is counted once
    per (tier, model_version) here and reported to the sink (the metrics)."""

    def __init__(self, store: JoinStore, sink: JoinSink | None = None) -> None:
        self._store = store
        self._sink = sink
        self.counts: dict[tuple[str, str], OutcomeCounts] = {}

    def add_scores(self, scores: Sequence[Score]) -> AddReport:
        offers = [Offer(s.transaction_id, "score", _encode_score(ScoreFacts.of(s)))
                  for s in scores]
        results = self._store.offer(offers)
        for s, r in zip(scores, results, strict=True):
            if r.status == "joined" and r.other is not None:
                self._count(ScoreFacts.of(s), r.other == b"1")
        return _report(results)

    def add_labels(self, labels: Sequence[Label]) -> AddReport:
        offers = [Offer(lb.transaction_id, "label", b"1" if lb.is_fraud else b"0")
                  for lb in labels]
        results = self._store.offer(offers)
        for lb, r in zip(labels, results, strict=True):
            if r.status == "joined" and r.other is not None:
                self._count(_decode_score(r.other), lb.is_fraud)
        return _report(results)

    def _count(self, facts: ScoreFacts, fraud: bool) -> None:
        key = (facts.tier, facts.model_version)
        self.counts.setdefault(key, OutcomeCounts()).add(outcome(facts.alert, fraud))
        if self._sink is not None:
            self._sink.joined(facts, fraud)


def _report(results: Sequence[OfferResult]) -> AddReport:
    n = {"pending": 0, "joined": 0, "duplicate": 0}
    for r in results:
        n[r.status] += 1
    return AddReport(n["pending"], n["joined"], n["duplicate"])
