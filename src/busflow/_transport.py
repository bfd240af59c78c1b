"""The contract between the bus and whatever carries its messages.

A transport owns queueing, delivery, acknowledgement, redelivery after a delay, and dead
letters. The bus owns routing, workflows, per-workflow ordering and the outbox. Between them
travels a ``TransportMessage``: a message's name and JSON body, with the headers a broker
would carry beside it. ``MemoryTransport`` is the in-process implementation;
``busflow.testing.BusContract`` is the suite that every transport runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol, runtime_checkable

__all__ = ["DeadLetter", "Delivery", "Subscription", "Transport", "TransportMessage"]


_NOTHING: Mapping[str, Any] = MappingProxyType({})


class TransportMessage(NamedTuple):
    """One message as it travels: what a broker's body and headers would hold.

    Immutable; ``message._replace(attempt=2)`` makes a changed copy.
    """

    name: str
    """The ``message_name`` of the message's type; the bus routes and decodes by it."""
    message_id: str
    """The same on every delivery of this message, retries included."""
    body: bytes
    """The message's fields as JSON, written by pydantic."""
    correlation_id: str | None = None
    attributes: Mapping[str, Any] = _NOTHING
    sticky_attributes: Mapping[str, Any] = _NOTHING
    attempt: int = 1
    """Which delivery attempt this is: 1 at first, one more on each retry."""
    completed_by: tuple[str, ...] = ()
    """Handlers that already finished with this message on an earlier attempt; a retry skips
    them, so that one handler's failure does not repeat another's effects."""
    partition_key: str | None = None
    """The value of the message's ``Message.partition_by`` field: a partitioned transport
    sends every message with one value to one partition. ``None``: no partition."""


class Delivery(NamedTuple):
    """A message handed to the bus by ``Transport.receive``, until it is settled."""

    message: TransportMessage
    receipt: Any = None
    """The transport's own handle for acknowledging this delivery; the bus never reads it."""


@dataclass(frozen=True)
class Subscription:
    """What the bus asks of a transport when it starts."""

    message_names: frozenset[str]
    """The names of the messages that this endpoint handles."""
    prefetch: int
    """How many deliveries the bus handles at once: the transport need not hold more."""


@dataclass(frozen=True)
class DeadLetter:
    """A message that could not be handled, kept as plain data."""

    message: TransportMessage
    error_type: str
    """The module-qualified name of the error's class."""
    error_text: str
    traceback: str
    """The error's formatted traceback."""
    attempts: int
    handler: str
    """Which handler failed: ``"WorkflowClass.method"``, a plain handler's name, or
    ``"busflow"`` for a message that could not be decoded."""


@runtime_checkable
class Transport(Protocol):
    """Carries messages between buses: a queue per endpoint, with delayed redelivery.

    The bus calls ``start`` once, then ``receive`` from each of its workers, and settles each
    delivery exactly once with ``complete``, ``retry`` or ``dead_letter``. ``close`` ends
    it: deliveries not yet settled go back to the queue where the transport can keep them
    (a broker redelivers them), and are reported as lost where it cannot.
    """

    async def start(self, subscription: Subscription) -> None:
        """Connect, declare what the subscription needs, and start receiving."""

    async def close(self) -> None:
        """Stop receiving and release connections; unsettled deliveries are given back."""

    async def send(self, message: TransportMessage) -> None:
        """Send a command to the endpoints that handle it; returns once it is accepted."""

    async def publish(self, message: TransportMessage) -> None:
        """Publish an event to every endpoint that subscribes to it."""

    async def receive(self) -> Delivery:
        """Wait for the next delivery."""

    async def complete(self, delivery: Delivery) -> None:
        """The delivery was handled: remove it for good."""

    async def retry(self, delivery: Delivery, message: TransportMessage, delay: float) -> None:
        """Deliver ``message`` (this delivery's message, one attempt later) after ``delay``
        seconds, holding no consumer meanwhile, and settle this delivery."""

    async def dead_letter(self, delivery: Delivery, dead_letter: DeadLetter) -> None:
        """Move the delivery to the dead letters, with why it failed."""
