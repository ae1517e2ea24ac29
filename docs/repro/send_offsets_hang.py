"""Minimal reproduction: `send_offsets_to_transaction(timeout)` blocks forever after a
re-bootstrap (librdkafka 2.16.0, confluent-kafka 2.16.1; Kafka 4.1.1 KRaft, one node).

Only confluent-kafka talks to the broker; Toxiproxy (plain HTTP) resets its connections.

1. A transactional producer and a consumer in a group; one full transaction with
   `send_offsets_to_transaction`, so the producer's coordinator cache holds the group's
   coordinator (broker 1).
2. Every client connection is reset (Toxiproxy `reset_peer`) for a moment: all known
   brokers are down at once, so librdkafka re-bootstraps (`metadata.recovery.strategy`
   defaults to `rebootstrap`) and *decommissions* broker 1's handle. The coordinator
   cache still holds that handle (it never comes up again: its thread spins in
   "Handle is terminating in state TRY_CONNECT").
3. Once the producer is connected again, a new transaction: `send_offsets_to_transaction`
   sends AddOffsetsToTxn (answered), then queues TxnOffsetCommit as a coordinator
   request for the group. The request finds the dead handle in the cache and waits for a
   broker state change to run again; none comes (every broker is up), its own timeout
   (`creq_ts_timeout`) is never checked, and the application thread waits for the result
   with `RD_POLL_INFINITE` (`rd_kafka_send_offsets_to_transaction` →
   `rd_kafka_txn_op_req1(rk, rko, RD_POLL_INFINITE)`): the call never returns.

With `--no-rebootstrap` (`metadata.recovery.strategy=none`) broker 1's handle is not
decommissioned; it reconnects and the same call returns in milliseconds.

Run against a stack started with faults (`rung stack up --faults`; the addresses are in
its stack.json: `bootstrap_servers` is the proxied one, `toxiproxy_api`):

    python docs/repro/send_offsets_hang.py --bootstrap 127.0.0.1:PROXY --direct 127.0.0.1:BROKER \
        --toxiproxy http://127.0.0.1:API [--no-rebootstrap]

or let it start one (`--local-stack`, uses rung's devstack for the broker only).
Exit code 0: the call returned within its timeout (+5 s); 1: it hung (reproduced).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

TIMEOUT_S = 10.0  # the timeout given to send_offsets_to_transaction
GRACE_S = 5.0


def toxic(api: str, method: str, path: str, body: dict[str, Any] | None = None) -> None:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(api + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10):
        pass


def reset_all_connections(api: str, proxy: str, producer: Producer, consumer: Consumer,
                          hold_s: float = 1.0) -> None:
    """`reset_peer` resets a connection on its next data: keep both clients talking to
    the broker while it is on, so that every connection of theirs goes down at once."""
    toxic(api, "POST", f"/proxies/{proxy}/toxics",
          {"name": "rst", "type": "reset_peer", "stream": "downstream", "toxicity": 1.0,
           "attributes": {"timeout": 0}})
    end = time.monotonic() + hold_s
    while time.monotonic() < end:
        for client in (producer, consumer):
            try:
                client.list_topics(timeout=0.2)
            except KafkaException:
                pass
        consumer.poll(0.05)
    toxic(api, "DELETE", f"/proxies/{proxy}/toxics/rst")


def one_transaction(producer: Producer, consumer: Consumer, topic: str, offset: int,
                    timeout_s: float) -> float:
    """begin → produce → send_offsets(timeout_s) → commit; the send_offsets seconds."""
    producer.begin_transaction()
    producer.produce(topic, value=b"x")
    t0 = time.monotonic()
    producer.send_offsets_to_transaction([TopicPartition(topic, 0, offset)],
                                         consumer.consumer_group_metadata(), timeout_s)
    took = time.monotonic() - t0
    producer.commit_transaction(timeout_s)
    return took


def run(bootstrap: str, direct: str, api: str, proxy: str, rebootstrap: bool,
        debug: str) -> int:
    topic, group = f"repro-{uuid.uuid4().hex[:8]}", f"repro-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": direct})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    common: dict[str, Any] = {"bootstrap.servers": bootstrap}
    if debug:
        common["debug"] = debug
    if not rebootstrap:
        common["metadata.recovery.strategy"] = "none"
    producer = Producer({**common, "transactional.id": f"{topic}-tx",
                         "transaction.timeout.ms": 60_000})
    consumer = Consumer({**common, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    consumer.subscribe([topic])
    producer.init_transactions(30)
    consumer.poll(5.0)  # join the group: its metadata carries the generation
    print(f"before the reset: send_offsets took {one_transaction(producer, consumer, topic, 1, TIMEOUT_S):.3f} s")
    reset_all_connections(api, proxy, producer, consumer)
    print("connections reset; waiting for the producer to reconnect")
    end = time.monotonic() + 30
    while time.monotonic() < end:  # the producer's metadata answers again
        try:
            producer.list_topics(topic, timeout=2)
            break
        except KafkaException:
            continue
    time.sleep(3.0)  # let every broker state change settle
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            result["took_s"] = one_transaction(producer, consumer, topic, 2, TIMEOUT_S)
        except KafkaException as exc:
            result["error"] = str(exc)

    t = threading.Thread(target=call, daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(TIMEOUT_S + GRACE_S)
    if t.is_alive():
        print(f"HUNG: send_offsets_to_transaction(timeout={TIMEOUT_S}) still blocked after "
              f"{time.monotonic() - t0:.1f} s (strategy="
              f"{'rebootstrap' if rebootstrap else 'none'})", flush=True)
        return 1  # no close(): the producer cannot be closed under a blocked call
    print(f"returned after {time.monotonic() - t0:.3f} s: {result} (strategy="
          f"{'rebootstrap' if rebootstrap else 'none'})")
    consumer.close()
    producer.flush(5)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", help="proxied bootstrap (every connection via Toxiproxy)")
    p.add_argument("--direct", help="the broker's own listener (topic creation)")
    p.add_argument("--toxiproxy", help="Toxiproxy API, http://host:port")
    p.add_argument("--proxy", default="kafka", help="the Toxiproxy proxy in front of Kafka")
    p.add_argument("--no-rebootstrap", action="store_true",
                   help="metadata.recovery.strategy=none (the fix)")
    p.add_argument("--debug", default="", help="librdkafka debug contexts, e.g. eos,broker")
    p.add_argument("--local-stack", action="store_true",
                   help="start a Kafka + Toxiproxy with rung's devstack for this run")
    a = p.parse_args()
    import confluent_kafka
    print(f"confluent-kafka {confluent_kafka.version()}, "
          f"librdkafka {confluent_kafka.libversion()[0]}")
    if not a.local_stack:
        if not (a.bootstrap and a.direct and a.toxiproxy):
            p.error("--bootstrap, --direct and --toxiproxy (or --local-stack)")
        return run(a.bootstrap, a.direct, a.toxiproxy, a.proxy, not a.no_rebootstrap, a.debug)
    import tempfile
    from pathlib import Path

    from stream_app.devstack.stack import LocalStack
    stack = LocalStack(Path(tempfile.mkdtemp(prefix="repro-stack-")), faults=True)
    state = stack.up()
    try:
        assert state.toxiproxy_api is not None
        code = run(state.bootstrap_servers, state.direct_bootstrap, state.toxiproxy_api,
                   a.proxy, not a.no_rebootstrap, a.debug)
    finally:
        stack.down()
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    import os
    os._exit(main())  # a hung librdkafka call would block a normal interpreter exit
