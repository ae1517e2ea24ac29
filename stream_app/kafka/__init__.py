"""Read this first: the Kafka client edge, shared by the live worker, replay, faust and tools.

Client configs, the one error policy (`errors`: what is dead-lettered, retried, fatal;
exit codes), runtime-neutral records and their encoding, the transactional committer,
admin, the credentials check and read-committed read-back. No scoring here, and
nothing from `stream_app.live`, `replay` or `devstack`.
"""
