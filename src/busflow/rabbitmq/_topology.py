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
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Literal

from busflow._errors import ConfigurationError

__all__ = ["DEFAULT_RETRY_DELAYS", "QueueType", "Topology", "dead_letter_queue_of"]

QueueType = Literal["quorum", "classic"]

DEFAULT_RETRY_DELAYS: tuple[float, ...] = (0.01, 0.05, 0.2, 1.0, 5.0, 30.0, 300.0)
"""Seconds: the retry queues' delays. A retry waits for the first one at least as long as
the delay that the bus asked for, or for the longest."""

NAME_LIMIT = 255
"""The longest queue or exchange name that RabbitMQ accepts, in bytes."""


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

    def all_queues(self) -> list[str]:
        return [self.queue, *self.retry_queues.values(), self.dead_letter_queue]

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
