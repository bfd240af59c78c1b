"""``DeadLetterQueue``: read an endpoint's dead letters, and send them back to be handled."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from busflow._transport import DeadLetter
from busflow._uri import hosts_of
from busflow.rabbitmq._codec import decode_dead_letter, encode
from busflow.rabbitmq._connection import connect
from busflow.rabbitmq._errors import RabbitMQTopologyError
from busflow.rabbitmq._publishing import broker_errors, declaring, publish
from busflow.rabbitmq._topology import dead_letter_queue_of

__all__ = ["DeadLetterQueue"]


class DeadLetterQueue:
    """The dead letters of the endpoint queue ``queue``: ``<queue>.dead-letter``.

    ``async with DeadLetterQueue(url, queue="orders-service") as dead:`` then
    ``await dead.list()`` to read them, oldest first, leaving them in place, and
    ``await dead.replay(message_id)`` or ``await dead.replay()`` (all) to send them back to
    the endpoint queue for one more round of attempts. A replayed message keeps its id and
    skips the handlers that had finished with it.
    """

    def __init__(self, url: str, *, queue: str, connect_timeout: float = 10.0) -> None:
        self.queue = queue
        self.name = dead_letter_queue_of(queue)
        self._url = url
        self.hosts = hosts_of(url)
        """The broker's hosts, for messages: never its credentials."""
        self._connect_timeout = connect_timeout
        self._connection: AbstractRobustConnection | None = None

    async def __aenter__(self) -> Self:
        self._connection, _ = await connect(
            self._url, connect_timeout=self._connect_timeout, name=f"busflow {self.name}"
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    async def list(self, limit: int | None = None) -> list[DeadLetter]:
        """The dead letters, oldest first (at most ``limit``); they stay where they are."""
        letters: list[DeadLetter] = []
        with broker_errors(self.hosts, f"reading {self.name}"):
            channel = await self._channel(confirms=False)
            try:
                queue, count = await self._declared(channel, self.name)
                for _ in range(count if limit is None else min(count, limit)):
                    incoming = await queue.get(no_ack=False, fail=False)
                    if incoming is None:
                        break
                    letters.append(decode_dead_letter(incoming))
            finally:
                await channel.close()  # what was read goes back, unacknowledged
        return letters

    async def replay(self, message_id: str | None = None) -> int:
        """Send the dead letter with ``message_id`` (or, with ``None``, every dead letter)
        back to the endpoint queue, as a first attempt; return how many were sent.

        Each is removed from the dead letters once the broker has confirmed its copy in the
        endpoint queue. Dead letters that arrive meanwhile are left for another replay.
        """
        replayed = 0
        with broker_errors(self.hosts, f"replaying {self.name}"):
            channel = await self._channel(confirms=True)
            try:
                await self._declared(channel, self.queue)
                queue, count = await self._declared(channel, self.name)
                for _ in range(count):
                    incoming = await queue.get(no_ack=False, fail=False)
                    if incoming is None:
                        break
                    if message_id is not None and incoming.message_id != message_id:
                        continue  # left unacknowledged: it goes back when the channel closes
                    await self._send_back(channel, incoming)
                    replayed += 1
                    if message_id is not None:
                        break
            finally:
                await channel.close()
        return replayed

    async def _send_back(
        self, channel: AbstractRobustChannel, incoming: AbstractIncomingMessage
    ) -> None:
        message = decode_dead_letter(incoming).message._replace(attempt=1)
        await publish(
            channel.default_exchange,
            encode(message),
            channel=channel,
            routing_key=self.queue,
            mandatory=True,
            what=f"{message.name} (message id {message.message_id})",
            confirm_timeout=self._connect_timeout,
            hosts=self.hosts,
        )
        await incoming.ack()

    async def _channel(self, *, confirms: bool) -> AbstractRobustChannel:
        if self._connection is None:
            raise RuntimeError("use DeadLetterQueue in 'async with'")
        return await self._connection.channel(publisher_confirms=confirms)

    async def _declared(
        self, channel: AbstractRobustChannel, name: str
    ) -> tuple[AbstractQueue, int]:
        """The queue ``name`` (which must exist) and how many messages it holds."""
        try:
            with declaring(self.hosts):
                queue = await channel.declare_queue(name, passive=True)
        except RabbitMQTopologyError:
            raise RabbitMQTopologyError(
                f"RabbitMQ at {self.hosts} has no queue {name!r}; check the queue name (a bus "
                f"declares {self.queue!r} and {self.name!r} when it starts)"
            ) from None
        result = queue.declaration_result
        return queue, result.message_count or 0
