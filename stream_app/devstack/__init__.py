"""Read this first: local development only: a Kafka (KRaft) + Redis stack without Docker,
the demo, load generation and worker child processes for tests and benchmarks.

Production modules never import this package (a unit test checks it).
"""
