"""What a ``RabbitMQTransport`` declares on the broker, and the names it gives it.

For an endpoint whose queue is ``orders-service``, under the prefix ``busflow``:

- ``busflow.<message name>``: a fanout exchange per message name. ``send`` and ``publish``
  go to it; every endpoint queue that handles the message is bound to it.
- ``orders-service``: the endpoint's durable queue (a quorum queue where the server has
  them), bound to the exchanges of the messages its bus handles.
- ``orders-service.retry-10ms``, ``orders-service.retry-50ms``, ...: one queue per retry
  delay, with that delay as its message TTL and the endpoint queue as its dead-letter
  target. A message waiting for a retry waits there: it holds no consumer and no prefetch
  slot, and, every message in one queue having the same TTL, none waits behind a longer one.
- ``orders-service.dead-letter``: where messages go after their last attempt.

A partitioned endpoint (``partitions=16``) adds:

- ``orders-service.partitions``: a direct exchange, bound to each message exchange in place
  of the endpoint queue. A message's routing key is the bucket of its partition key, two
  hex digits of its hash (``"00"`` to ``"ff"``); bucket ``b`` is bound to partition queue
  ``b % partitions``, and a message with no partition key (routing key ``""``) to the
  endpoint queue.
- ``orders-service.partition-0`` ... ``orders-service.partition-15``: the partition queues.
  Every process consumes every one, each with its own random consumer priority per
  partition; the broker gives a partition's messages to its highest-priority consumer while
  that one has room, so each partition has one process at a time, and another takes over
  when it stops or falls behind. Retries come back through the endpoint queue.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from busflow._errors import ConfigurationError

__all__ = [
    "BUCKETS",
    "DEFAULT_RETRY_DELAYS",
    "PARTITIONS_ARGUMENT",
    "QueueType",
    "Topology",
    "bucket_of",
    "dead_letter_queue_of",
]

QueueType = Literal["quorum", "classic"]

DEFAULT_RETRY_DELAYS: tuple[float, ...] = (0.01, 0.05, 0.2, 1.0, 5.0, 30.0, 300.0)
"""Seconds: the retry queues' delays. A retry waits for the first one at least as long as
the delay that the bus asked for, or for the longest."""

NAME_LIMIT = 255
"""The longest queue or exchange name that RabbitMQ accepts, in bytes."""


BUCKETS = 256
"""How many buckets partition keys hash into: a partitioned endpoint has at most this many
partitions."""
PARTITIONS_ARGUMENT = "x-busflow-partitions"
"""The partition exchange's argument that records how many partitions it feeds, for
operators to read. RabbitMQ does not compare it on a new declaration: what refuses a process
with another number is the check of the partition queues (``busflow.rabbitmq._partitions``)."""


def bucket_of(partition_key: str | None) -> str:
    """The routing key of a message: its partition key's bucket, two hex digits, or ``""``."""
    if partition_key is None:
        return ""
    return hashlib.blake2b(partition_key.encode(), digest_size=1).hexdigest()


def dead_letter_queue_of(queue: str) -> str:
    return f"{queue}.dead-letter"


def _label(milliseconds: int) -> str:
    """``50`` reads ``50ms``, ``5000`` reads ``5s``, ``300000`` reads ``5min``."""
    if milliseconds % 60_000 == 0:
        return f"{milliseconds // 60_000}min"
    if milliseconds % 1000 == 0:
        return f"{milliseconds // 1000}s"
    return f"{milliseconds}ms"


@dataclass(frozen=True)
class Topology:
    """The names and arguments of one endpoint's exchanges and queues."""

    queue: str
    prefix: str
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS
    partitions: int = 0
    """0: one endpoint queue that every process shares, in turn."""
    retry_milliseconds: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not self.queue or not self.queue.strip():
            raise ConfigurationError("RabbitMQTransport needs a queue name, such as 'orders'")
        if self.queue.startswith("amq."):
            raise ConfigurationError(
                f"the queue name {self.queue!r} starts with 'amq.', which RabbitMQ reserves"
            )
        longest = f"{self.queue}.retry-{_label(10**9)}"
        if len(longest.encode()) > NAME_LIMIT:
            raise ConfigurationError(
                f"the queue name {self.queue[:40]!r}... is too long: RabbitMQ names hold at "
                f"most {NAME_LIMIT} bytes, and busflow adds suffixes such as '.dead-letter'"
            )
        milliseconds = tuple(round(delay * 1000) for delay in self.retry_delays)
        if not milliseconds or any(ms < 1 for ms in milliseconds):
            raise ConfigurationError(
                f"retry_delays must be one or more delays of 1 ms or more, not {self.retry_delays}"
            )
        if list(milliseconds) != sorted(set(milliseconds)):
            raise ConfigurationError(
                f"retry_delays must be distinct whole milliseconds in increasing order, not "
                f"{self.retry_delays}"
            )
        object.__setattr__(self, "retry_milliseconds", milliseconds)
        partitions = self.partitions
        if isinstance(partitions, bool) or not isinstance(partitions, int):
            raise ConfigurationError(f"partitions must be a whole number, not {partitions!r}")
        if not 0 <= partitions <= BUCKETS:
            raise ConfigurationError(
                f"partitions must be from 0 (not partitioned) to {BUCKETS}, not {partitions}"
            )

    @property
    def dead_letter_queue(self) -> str:
        return dead_letter_queue_of(self.queue)

    def exchange(self, message_name: str) -> str:
        """The exchange of a message name: ``<prefix>.<message name>``."""
        name = f"{self.prefix}.{message_name}" if self.prefix else message_name
        if len(name.encode()) > NAME_LIMIT:
            raise ConfigurationError(
                f"the exchange name for {message_name!r} would be longer than RabbitMQ's "
                f"{NAME_LIMIT} bytes; give the message a shorter message_name"
            )
        return name

    @property
    def retry_queues(self) -> dict[int, str]:
        """Each retry queue's name, by its delay in milliseconds."""
        return {ms: f"{self.queue}.retry-{_label(ms)}" for ms in self.retry_milliseconds}

    def retry_queue_for(self, delay: float) -> str:
        """The retry queue whose delay is the first at least ``delay`` seconds long, or the
        longest: a retry never comes sooner than the bus asked, unless past the longest."""
        levels = self.retry_milliseconds
        index = bisect.bisect_left(levels, delay * 1000)
        return self.retry_queues[levels[min(index, len(levels) - 1)]]

    @property
    def partition_exchange(self) -> str:
        return f"{self.queue}.partitions"

    @property
    def partition_queues(self) -> list[str]:
        return [f"{self.queue}.partition-{n}" for n in range(self.partitions)]

    def partition_bindings(self) -> Iterator[tuple[str, str]]:
        """``(routing key, queue)``: each bucket to its partition queue, and ``""`` (no
        partition key) to the endpoint queue."""
        yield "", self.queue
        queues = self.partition_queues
        for bucket in range(BUCKETS):
            yield f"{bucket:02x}", queues[bucket % self.partitions]

    def all_queues(self) -> list[str]:
        return [
            self.queue,
            *self.partition_queues,
            *self.retry_queues.values(),
            self.dead_letter_queue,
        ]

    # arguments

    @staticmethod
    def queue_arguments(queue_type: QueueType) -> dict[str, Any]:
        """The endpoint and dead-letter queues' arguments."""
        return {"x-queue-type": "quorum"} if queue_type == "quorum" else {}

    def retry_queue_arguments(self, milliseconds: int, queue_type: QueueType) -> dict[str, Any]:
        """A retry queue: its messages expire after its delay, into the endpoint queue."""
        arguments: dict[str, Any] = {
            "x-message-ttl": milliseconds,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.queue,
        }
        if queue_type == "quorum":
            # At-least-once dead-lettering: an expired retry is moved with a confirm, so a
            # broker failure cannot drop it on its way back to the endpoint queue.
            arguments |= {
                "x-queue-type": "quorum",
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            }
        return arguments
