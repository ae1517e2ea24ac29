"""Read this first: the Kafka client edge, shared by the live worker, replay and tools.

Client configs, the one error policy, record encoding, the transactional committer,
admin, the credentials check and read-committed read-back. No scoring here, and
nothing from `stream_app.live`, `replay` or `devstack`.
"""
