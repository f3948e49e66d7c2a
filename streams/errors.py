"""Errors raised by the ``streams`` package.

Every error carries a ``retriable`` flag: code that decides whether to try again reads the
flag instead of listing exception types.

    StreamsError                      base of everything raised here
    ├── ConfigError                   bad settings or arguments given to a streams component
    ├── BrokerError                   the local development broker could not be fetched/run
    │   └── ToolMissingError          java or mvn is not installed
    ├── EventError                    an audit event does not meet the contract
    │   ├── InvalidEventError         one or more fields are wrong (lists every one)
    │   └── DecodeError               bytes from the topic cannot be turned into an event
    │       ├── UnknownSchemaError    the writer schema fingerprint is not known here
    │       └── CorruptRecordError    the marker or the Avro body is damaged
    ├── PublishError                  the broker refused or failed to store an event
    ├── TopicAdminError               topic creation or inspection failed
    ├── SinkError                     a destination did not acknowledge a batch; ``retriable``
    │                                 and ``retry_after`` steer the lane's next attempt
    └── CommitError                   the engine could not commit offsets
"""

from __future__ import annotations

from dataclasses import dataclass


class StreamsError(Exception):
    """Base class of every error raised by the streams package."""

    retriable: bool = False


class ConfigError(StreamsError):
    """Settings or arguments handed to a streams component are invalid."""


class BrokerError(StreamsError):
    """The local development Kafka broker could not be fetched, started or stopped."""


class ToolMissingError(BrokerError):
    """A program the development broker needs (java, mvn) is not installed."""


class EventError(StreamsError):
    """An audit event does not meet the contract (bad fields or undecodable bytes)."""


@dataclass(frozen=True)
class FieldProblem:
    """One wrong field of an event: a dotted path (``actor.type``) and what is wrong with it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InvalidEventError(EventError):
    """The event has one or more wrong fields; ``problems`` lists every one of them."""

    def __init__(self, problems: list[FieldProblem], event_id: str | None = None) -> None:
        self.problems = list(problems)
        self.event_id = event_id
        where = f"event {event_id!r}" if event_id else "event"
        detail = "; ".join(str(p) for p in self.problems)
        super().__init__(f"invalid {where}: {detail}")


class DecodeError(EventError):
    """Bytes read from the topic cannot be decoded into an audit event."""


class UnknownSchemaError(DecodeError):
    """The record names a writer schema (by fingerprint) that this reader does not know."""


class CorruptRecordError(DecodeError):
    """The single-object marker or the Avro body of a record is damaged."""


class PublishError(StreamsError):
    """The broker refused an event or delivery failed; ``retriable`` tells if trying again helps."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class TopicAdminError(StreamsError):
    """Creating or describing topics failed."""


class SinkError(StreamsError):
    """A sink could not deliver a batch; the engine retries it later, in order, never drops it.

    ``retriable`` True means a transient failure (backoff and retry soon); False means the
    destination needs an operator or the customer (misconfigured, forbidden): the lane is
    paused and tried again after a long delay, so nothing is lost when it is fixed.
    ``retry_after`` (seconds) is honoured when the destination asked for it.
    """

    def __init__(
        self, message: str, *, retriable: bool = True, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.retry_after = retry_after


class CommitError(StreamsError):
    """Offsets could not be committed (the next periodic commit tries again)."""

    retriable = True
