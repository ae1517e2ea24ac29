"""Labels to the labels topic, without a broker: bulk history labels, a feed released on
the stream's clock by `produce_events` and `produce_bulk`, and the demo's split."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from stream_app.config import load_settings
from stream_app.devstack import demo, produce
from stream_app.devstack.produce import LabelFeed, produce_bulk, produce_events, produce_labels
from topics.codec import decode_label, decode_transaction
from topics.schemas import Label, LabelKind, Transaction


class _Producer:
    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.sent: list[tuple[str, bytes, bytes, int | None]] = []

    def produce(self, topic: str, value: bytes, key: bytes, timestamp: int | None = None) -> None:
        self.sent.append((topic, key, value, timestamp))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[_Producer]:
    out: list[_Producer] = []

    def factory(conf: dict[str, Any]) -> _Producer:
        out.append(_Producer(conf))
        return out[-1]

    monkeypatch.setattr(produce, "Producer", factory)
    return out


T0 = 1_700_000_000.0  # simulated times are offsets from here


def _label(tx: str, at: float, kind: LabelKind = LabelKind.FRAUD) -> Label:
    return Label(tx, kind, T0 + at, terminal_id="T1", event_time_s=T0 + at - 50.0)


def _tx(i: int, t: float) -> Transaction:
    return Transaction(transaction_id=f"tx-{i}", event_time_s=T0 + t, customer_id="c", terminal_id="T1",
                       amount=10.0, currency="EUR", merchant_category="5411",
                       is_international=False, has_international_history=False,
                       account_age_days=10, channel="pos")


def test_history_labels_go_out_in_label_time_order_keyed_with_their_time(
        made: list[_Producer]) -> None:
    labels = [_label("b", 2000.0), _label("a", 1000.5, LabelKind.GENUINE), _label("c", 3000.0)]
    assert produce_labels({"bootstrap.servers": "x"}, "p.labels", labels) == 3
    sent = made[0].sent
    assert [k for _, k, _, _ in sent] == [b"a", b"b", b"c"]
    # the label's time is in the payload; the record keeps the broker's create time
    assert [decode_label(v).labelled_at_s for _, _, v, _ in sent] == [T0 + t for t in (1000.5, 2000.0, 3000.0)]
    assert [ts for *_, ts in sent] == [None, None, None]
    assert {topic for topic, *_ in sent} == {"p.labels"}
    assert decode_label(sent[0][2]) == labels[1]


def test_feed_releases_each_label_once_when_its_time_comes() -> None:
    feed = LabelFeed("l", [_label("b", 20.0), _label("a", 10.0), _label("c", 30.0)])
    assert [lb.transaction_id for lb in feed.due(T0 + 15.0)] == ["a"]
    assert feed.due(T0 + 15.0) == [] and len(feed) == 2
    feed.skip(["b"])
    assert [lb.transaction_id for lb in feed.due(T0 + 100.0)] == ["c"]
    assert len(feed) == 0


def test_produce_events_sends_labels_when_the_stream_reaches_them(made: list[_Producer]) -> None:
    txs = [_tx(i, 1000.0 + 100 * i) for i in range(10)]  # sim times 1000 .. 1900
    feed = LabelFeed("l", [
        _label("old", 500.0),  # in the past: at once, before the first event
        _label("tx-1", 1250.0),  # after tx-2 (1200), before tx-3 (1300)
        _label("tx-4", 1450.0),  # tx-4 is replaced by a broken record: never sent
        _label("tx-5", 5000.0),  # still in the future at the end
    ])
    report = produce_events({"bootstrap.servers": "x"}, "t", txs, rate_per_s=0, bad_every=4,
                            label_feed=feed)
    order = [(topic, key.decode()) for topic, key, _, _ in made[0].sent]
    assert order[0] == ("l", "old")
    assert order.index(("l", "tx-1")) == order.index(("t", "tx-3")) - 1
    assert ("l", "tx-4") not in order and ("l", "tx-5") not in order
    assert report.labels_sent == 2 and report.labels_pending == 1
    events = {k: decode_transaction(v) for t, k, v, _ in made[0].sent
              if t == "t" and not k.startswith(b"bad-")}
    label_rec = next(r for r in made[0].sent if r[:2] == ("l", b"tx-1"))
    released = decode_label(label_rec[2])
    # stamped now, with its transaction's stamped event time (in the payload)
    assert released.event_time_s == events[b"tx-1"].event_time_s
    assert released.labelled_at_s >= (released.event_time_s or 0.0)
    assert label_rec[3] is None
    assert decode_label(made[0].sent[0][2]).event_time_s == T0 + 450.0  # not sent in this run


def test_produce_bulk_releases_labels_after_each_chunk(made: list[_Producer]) -> None:
    times = T0 + np.arange(100, dtype=np.float64) * 10.0

    def encode(lo: int, hi: int, stamp: float) -> tuple[list[bytes], list[bytes]]:
        return [f"tx-{i}".encode() for i in range(lo, hi)], [b"{}"] * (hi - lo)

    feed = LabelFeed("l", [_label("tx-3", 95.0), _label("tx-30", 400.0),
                           _label("tx-60", 10_000.0)])
    report = produce_bulk({"bootstrap.servers": "x"}, "t", 100, encode, chunk=20, bad_every=30,
                          label_feed=feed, event_times_s=times)
    keys = [(topic, key.decode()) for topic, key, _, _ in made[0].sent]
    assert keys.index(("l", "tx-3")) == 20  # after the first chunk (clock 190 s)
    assert ("l", "tx-30") not in keys  # its transaction was replaced by a broken record
    assert report.labels_sent == 1 and report.labels_pending == 1
    with pytest.raises(ValueError, match="event time"):
        produce_bulk({"bootstrap.servers": "x"}, "t", 100, encode, label_feed=feed)


def test_demo_sends_known_history_labels_first_and_feeds_the_rest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from scorers.lab.sim.load import WARM_HISTORY_DAYS, LoadConfig, generate_load

    load = generate_load(3000, LoadConfig(n_customers=1500, n_terminals=3000), 4,
                         history_days=WARM_HISTORY_DAYS, end_s=1.8e9)
    bulk: list[Label] = []
    monkeypatch.setattr(demo, "produce_labels", lambda conf, topic, labels: bulk.extend(labels))
    settings = load_settings(topics__prefix="p")
    feed, known = demo._label_feed(settings, load, 4, with_history=True)
    start = load.live.event_time_s[0]
    assert known == len(bulk) > 0 and all(lb.labelled_at_s <= start for lb in bulk)
    assert all(lb.transaction_id.startswith("demo4h-") for lb in bulk)
    assert feed.topic == "p.labels"
    assert len(feed) == len(load.history_labels) + len(load.live_labels) - known
    rest = feed.due(float("inf"))
    assert all(lb.labelled_at_s > start for lb in rest)
    assert {lb.transaction_id.split("-")[0] for lb in rest} == {"demo4h", "demo4"}
    live_only, none = demo._label_feed(settings, load, 4, with_history=False)
    assert none == 0 and len(live_only) == len(load.live_labels)
