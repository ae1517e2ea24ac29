"""Read this first: rung's contracts.

What lives here: the transaction event schema and the score schema
(`schemas.py`), their byte encodings (`codec.py`), and the topic names and
topic configurations (`catalog.py`). Everything a producer or consumer of
rung's topics needs to agree on, and nothing else.

What must not be imported here: any broker client (confluent_kafka, faust),
prometheus_client, torch, or anything from `scorers` or `stream_app`.
Nothing in this package talks to a broker.
"""
