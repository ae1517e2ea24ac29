"""Read this first: rung's pure scoring core.

What lives here: the degradation ladder (cache → primary → fallback → rules →
safe default), its tiers, the circuit breakers, the `Deadline` and injected
clock, the micro-batcher, the prediction cache and feature store adapters, the
rules, the model adapters and artifacts, the transaction simulator, the shared
feature definitions and the training and evaluation code.

What must not be imported here: confluent_kafka, faust, prometheus_client or
anything from `stream_app`. The core reports through listener hooks
(`scorers.listeners`); the Kafka edge turns those into metrics. A unit test
walks the imports and fails if this rule is broken.
"""
