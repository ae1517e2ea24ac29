"""Error policy for the Kafka edge, in one place.

Every error the worker meets is classified once, here:

- `DEAD_LETTER`: the record itself is bad (cannot be decoded or keyed). It goes
  to the dead-letter topic with its error and source coordinates; the batch
  goes on.
- `ABORT`: the transaction cannot be completed (abortable transactional
  error, a retriable error that outlived its deadline). Abort it and rewind the
  consumer to the batch's first offsets; the records are consumed again.
- `RETRY`: a retriable error (timeout, coordinator moving). Retry the same
  call while the transaction's budget lasts.
- `FATAL`: the producer is fenced or otherwise fatally broken, or the consumer
  hit an unrecoverable error. The worker exits non-zero and the supervisor
  restarts it; Kafka's transactions guarantee nothing half-done is visible.
"""

from __future__ import annotations

from enum import Enum

from confluent_kafka import KafkaError, KafkaException


class Policy(str, Enum):
    DEAD_LETTER = "dead_letter"
    ABORT = "abort"
    RETRY = "retry"
    FATAL = "fatal"


class FatalWorkerError(RuntimeError):
    """The worker cannot go on; exit non-zero so the supervisor restarts it."""


_FATAL_CODES = frozenset({
    KafkaError._FENCED,
    KafkaError.PRODUCER_FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError._AUTHENTICATION,
    KafkaError.UNSUPPORTED_VERSION,
    KafkaError._INVALID_ARG,
})


def kafka_error(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def classify_transaction_error(exc: BaseException) -> Policy:
    """What to do with an exception raised by a transactional producer call."""
    err = kafka_error(exc)
    if err is None:
        return Policy.FATAL
    if err.fatal() or err.code() in _FATAL_CODES:
        return Policy.FATAL
    if err.txn_requires_abort():
        return Policy.ABORT
    if err.retriable():
        return Policy.RETRY
    return Policy.ABORT


def classify_consumer_error(err: KafkaError) -> Policy | None:
    """What to do with an error delivered as a message by the consumer.

    None means "informational, ignore" (end of partition and the like).
    """
    if err.code() in (KafkaError._PARTITION_EOF, KafkaError._NO_OFFSET):
        return None
    if err.fatal() or err.code() in _FATAL_CODES:
        return Policy.FATAL
    if err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION,
                      KafkaError._UNKNOWN_TOPIC):
        return Policy.FATAL
    return None  # transient broker/transport errors: librdkafka recovers by itself
