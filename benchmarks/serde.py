"""Serialization cost per record for each value format, against JSON in the same run.

`python -m benchmarks.serde [--registry-url URL] [--records N]`

Per format (json, avro, protobuf) and per record, in microseconds (median of timed
loops, `benchmarks.micro.time_per_call_s`):
- `decode_transaction_us`: wire bytes → a validated `Transaction`, what rung pays per
  consumed record (`RecordFormat.decode_transaction`, the schema-id check included);
- `encode_score_us`: a `Score` → wire bytes, what rung pays per answer;
- `encode_transaction_us`: what a producer pays;
plus `transaction_bytes` / `score_bytes` (mean size on the wire, header included) and
each timing's ratio to JSON's. For Avro and Protobuf, `library_decode_transaction_us` is
the same decode through confluent-kafka's `AvroDeserializer` / `ProtobufDeserializer`
(then the same checks): what rung's own read path (`stream_app.kafka.serde`) replaces.
Avro values are written by confluent-kafka's `AvroSerializer`; Protobuf ones are framed by
rung (for the registry's sake, not for speed).

The registry is only on the path for an id the client has not seen: the timings are of
the warm path, after the first record of each kind fetched or registered its schema. By
default the registry is confluent-kafka's in-process mock (no network at all); with
`--registry-url` a real one (e.g. the local stack's, `rung stack up --registry`). The
events are `synthetic_events` over 977 customers and 1,999 terminals (varied ids, amounts
and fields: no two payloads alike). Writes `benchmarks/results/serde-<time>.json`.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

from benchmarks.micro import time_per_call_s
from benchmarks.report import result_document, write_document
from stream_app.devstack.produce import synthetic_events
from stream_app.kafka.serde import JSON, RecordFormat, RegistryFormat, registry_client
from topics.schemas import Action, Score, Transaction

TOPIC = "bench.transactions"
SCORES_TOPIC = "bench.scores"
FORMATS = ("json", "avro", "protobuf")


def _scores(txs: list[Transaction]) -> list[Score]:
    return [Score(transaction_id=t.transaction_id, score=(i % 997) / 997.0,
                  action=(Action.ALLOW, Action.REVIEW, Action.BLOCK)[i % 3],
                  flag_for_review=i % 7 == 0, tier="primary", model_version="bench-1",
                  confidence=0.9, reasons=("amount_vs_customer_mean", "terminal_risk")[: i % 3],
                  latency_s=0.003, scored_at_s=1_790_000_000.0 + i)
            for i, t in enumerate(txs)]


def measure_format(fmt: RecordFormat, txs: list[Transaction], scores: list[Score],
                   repeats: int = 5) -> dict[str, float]:
    n = len(txs)
    payloads = [fmt.encode_transaction(t, TOPIC) for t in txs]
    decoded = [fmt.decode_transaction(p, TOPIC) for p in payloads]
    if decoded != txs:  # the benchmark measures a correct round trip or nothing
        raise AssertionError(f"{fmt.kind}: decoded transactions differ from the originals")
    encoded_scores = [fmt.encode_score(s, SCORES_TOPIC) for s in scores]
    decode = fmt.decode_transaction
    encode_score = fmt.encode_score
    encode_tx = fmt.encode_transaction
    return {
        "decode_transaction_us": time_per_call_s(
            lambda: [decode(p, TOPIC) for p in payloads], repeats) / n * 1e6,
        "encode_score_us": time_per_call_s(
            lambda: [encode_score(s, SCORES_TOPIC) for s in scores], repeats) / n * 1e6,
        "encode_transaction_us": time_per_call_s(
            lambda: [encode_tx(t, TOPIC) for t in txs], repeats) / n * 1e6,
        "transaction_bytes": statistics.fmean(len(p) for p in payloads),
        "score_bytes": statistics.fmean(len(b) for b in encoded_scores),
    }


def library_decode_us(fmt: RegistryFormat, txs: list[Transaction], repeats: int) -> float:
    """Per record: confluent-kafka's deserializer, then the same dict → Transaction."""
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from topics.formats import avro, protobuf
    from topics.formats.wire import transaction_from_dict

    payloads = [fmt.encode_transaction(t, TOPIC) for t in txs]
    ctx = SerializationContext(TOPIC, MessageField.VALUE)
    if fmt.kind == "avro":
        lib = AvroDeserializer(fmt.client, avro.schema_text(avro.TRANSACTION_SCHEMA))
        to_dict: Any = dict
    else:
        lib = ProtobufDeserializer(protobuf.TransactionMessage,
                                   {"use.deprecated.format": False})
        to_dict = protobuf.message_to_dict
    if [transaction_from_dict(to_dict(lib(p, ctx))) for p in payloads] != txs:
        raise AssertionError(f"{fmt.kind}: the library decode differs")
    return time_per_call_s(lambda: [transaction_from_dict(to_dict(lib(p, ctx)))
                                    for p in payloads], repeats) / len(txs) * 1e6


def run(registry_url: str | None = None, records: int = 2_000,
        repeats: int = 5) -> dict[str, Any]:
    """Every format over the same records; the result document (not yet written)."""
    started = time.time()
    txs = list(synthetic_events(records, prefix="serde"))
    scores = _scores(txs)
    url = registry_url or f"mock://{uuid.uuid4().hex}"
    client = registry_client(url, timeout_s=10.0)
    formats: dict[str, RecordFormat] = {"json": JSON, "avro": RegistryFormat("avro", client),
                                        "protobuf": RegistryFormat("protobuf", client)}
    results: dict[str, Any] = {name: measure_format(fmt, txs, scores, repeats)
                               for name, fmt in formats.items()}
    for name in ("avro", "protobuf"):
        fmt = formats[name]
        assert isinstance(fmt, RegistryFormat)
        results[name]["library_decode_transaction_us"] = library_decode_us(fmt, txs, repeats)
    base = results["json"]
    for name in FORMATS:
        row = results[name]
        row["ratio_to_json"] = {k: round(row[k] / base[k], 3)
                                for k in ("decode_transaction_us", "encode_score_us",
                                          "encode_transaction_us", "transaction_bytes",
                                          "score_bytes")}
    settings = {"records": records, "repeats": repeats,
                "registry": "mock" if registry_url is None else registry_url,
                "events": "synthetic_events (977 customers, 1,999 terminals)"}
    return result_document("serde", settings, results, started_at=started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry-url", default=None,
                        help="a Confluent-API registry; default: confluent-kafka's mock")
    parser.add_argument("--records", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    doc = run(args.registry_url, args.records, args.repeats)
    path = write_document(doc)
    print(f"{'format':<10}{'decode tx µs':>14}{'encode score µs':>17}{'encode tx µs':>14}"
          f"{'tx bytes':>10}{'score bytes':>13}")
    for name in FORMATS:
        r = doc["results"][name]
        print(f"{name:<10}{r['decode_transaction_us']:>14.2f}{r['encode_score_us']:>17.2f}"
              f"{r['encode_transaction_us']:>14.2f}{r['transaction_bytes']:>10.1f}"
              f"{r['score_bytes']:>13.1f}")
    for name in ("avro", "protobuf"):
        print(f"{name} through confluent-kafka's deserializer: "
              f"{doc['results'][name]['library_decode_transaction_us']:.2f} µs per record")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
