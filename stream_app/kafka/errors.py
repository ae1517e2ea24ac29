"""Error policy for every runtime (live worker, replay, faust), in one place.

What happens to each kind of error is decided here and nowhere else:

- dead-letter: the record itself is bad (cannot be decoded or keyed:
  `DEAD_LETTER_ERRORS`). It goes to the dead-letter topic with its error, its
  source coordinates and its original bytes; the batch goes on.
- `Policy.ABORT`: the transaction cannot be completed (abortable transactional
  error, a retriable error that outlived its budget). Abort it and rewind the
  consumer to the batch's first offsets; the records are consumed again and the
  batch is not accounted. The abort metric is labelled with `abort_reason`, a
  bounded name (librdkafka's error code name), never the error text.
- `Policy.RETRY`: a retriable error (timeout, coordinator moving or loading).
  Retry the same call while its budget lasts (`retry_within`).
- `Policy.FATAL`: the producer is fenced or otherwise fatally broken, the
  consumer hit an unrecoverable error, the scorer raised or broke its contract
  (not exactly one answer per record), a produce was not acknowledged, a replay
  made no progress. Raise `FatalError`; the process exits with `EXIT_FATAL` and
  the supervisor restarts it. Kafka's transactions (live, replay) or the held
  offsets (faust) guarantee nothing half-done is committed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum
from typing import TypeVar

import structlog
from confluent_kafka import KafkaError, KafkaException

from topics.codec import DecodeError

log = structlog.get_logger(__name__)

T = TypeVar("T")

EXIT_OK = 0
EXIT_FATAL = 3

# A record that raises one of these while being decoded is dead-lettered, not retried.
DEAD_LETTER_ERRORS: tuple[type[Exception], ...] = (DecodeError,)


class Policy(str, Enum):
    ABORT = "abort"
    RETRY = "retry"
    FATAL = "fatal"


class FatalError(RuntimeError):
    """The process cannot go on; exit with EXIT_FATAL so the supervisor restarts it."""


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

# Group-coordinator requests (committed offsets) that are worth repeating while the
# coordinator moves or loads, even where librdkafka does not mark them retriable.
_COORDINATOR_CODES = frozenset({
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError._TIMED_OUT,
})


def kafka_error(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def abort_reason(exc: BaseException) -> str:
    """A bounded label for an aborted transaction: the librdkafka error code's name."""
    err = kafka_error(exc)
    if err is None:
        return "unknown"
    name = err.name()
    return name.lower().lstrip("_") if name else "unknown"


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


def classify_coordinator_error(exc: BaseException) -> Policy:
    """What to do with an exception from a group-coordinator request (`committed`)."""
    err = kafka_error(exc)
    moving = err is not None and (err.retriable() or err.code() in _COORDINATOR_CODES)
    return Policy.RETRY if moving else Policy.FATAL


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


def retry_within(call: Callable[[], T], timeout_s: float, classify: Callable[[BaseException], Policy],
                 *, what: str, pause_s: float = 0.2,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """`call()`, repeated while it fails with an error `classify` calls RETRY and the
    budget lasts; anything else, or the budget running out, raises `FatalError`."""
    end = monotonic() + timeout_s
    while True:
        try:
            return call()
        except KafkaException as exc:
            if classify(exc) is not Policy.RETRY or monotonic() > end:
                raise FatalError(f"{what} failed: {exc}") from exc
            log.info("kafka_retry", what=what, error=str(exc))
            sleep(pause_s)
