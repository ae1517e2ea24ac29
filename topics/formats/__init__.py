"""Read this first: the Avro and Protobuf schemas of rung's topics, derived, not written.

One source of truth: the dataclasses in `topics.schemas`. `wire.py` reads their fields
and type hints (`wire_fields`) and says which of them travel (the same names as the JSON
contract's `transaction_to_dict` / `score_to_dict`); `avro.py` and `protobuf.py` render
those fields as an Avro record schema and as a proto3 message (a descriptor built in
Python and its `.proto` text). Add a field to `Score` and every format has it.

Decoded values become the same dict shape as JSON and go through the same checks
(`topics.codec`): one set of validation rules, whatever the bytes were.

What must not be imported here: any broker or registry client (confluent_kafka), or
anything from `scorers` or `stream_app`. Talking to a schema registry is the Kafka edge's
job (`stream_app.kafka.serde`).
"""
