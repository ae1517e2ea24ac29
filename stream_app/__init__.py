"""Read this first: rung's Kafka edge.

What lives here: configuration (`config.py`), the local dev stack
(`stack.py`), the confluent-kafka worker loop and its transactions
(`worker.py`), the faust runtime, metrics and HTTP endpoints, logging and the
`rung` CLI. It turns bytes from Kafka into `topics` values, hands batches to
the pure core in `scorers`, and turns results back into records.

What must not live here: scoring logic. Anything that decides a score belongs
in `scorers`; anything that two processes must agree on belongs in `topics`.
"""
