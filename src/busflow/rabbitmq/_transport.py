"""``RabbitMQTransport``: the bus's messages on RabbitMQ, shared by as many processes as run."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Iterable
from typing import Any

import aiormq
from aio_pika import ExchangeType
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from busflow._errors import BusError, ConfigurationError
from busflow._logs import with_fields
from busflow._transport import DeadLetter, Delivery, Subscription, TransportMessage
from busflow._uri import hosts_of, redact_uri
from busflow.rabbitmq._codec import decode, encode, encode_dead_letter
from busflow.rabbitmq._connection import (
    NoDelaySockets,
    check_url,
    connect,
    reason_of,
    server_version,
)
from busflow.rabbitmq._partitions import (
    bind_endpoint_queue,
    declare_partitions,
    layout_lock,
    refuse_another_layout,
)
from busflow.rabbitmq._publishing import declaring, publish
from busflow.rabbitmq._topology import DEFAULT_RETRY_DELAYS, QueueType, Topology, bucket_of

__all__ = ["RabbitMQTransport"]

QUORUM_SINCE = (3, 8)
"""The first RabbitMQ version with quorum queues."""
DECODE_ERROR = "busflow.MessageDecodeError"


class RabbitMQTransport:
    """One endpoint on RabbitMQ: a durable queue that every process of the endpoint shares.

    ``RabbitMQTransport("amqp://user:password@host/vhost", queue="orders-service")``, then
    ``Bus.configure().with_transport(transport)``. At ``start`` it declares, idempotently,
    an exchange per message name under ``prefix``, the endpoint's queue bound to the
    exchanges of the messages its bus handles, its retry queues and its dead-letter queue
    ``<queue>.dead-letter`` (see ``busflow.rabbitmq`` for the layout). ``queue_type`` is
    ``"quorum"`` or ``"classic"``; by default quorum where the server has them.

    Messages are persistent and published with publisher confirms: ``send`` and
    ``publish`` return once the broker has them. The broker hands the bus as many
    deliveries at once as the bus's concurrency (with partitions, up to
    ``partition_prefetch`` more per partition), and a delivery is acknowledged only when
    the bus settles it; whatever a process had not settled when it died, the broker
    delivers again. A retry waits in a retry queue, holding no consumer. A message that the
    transport cannot read goes to the dead-letter queue at once.

    With ``partitions=N`` the endpoint keeps related messages together: a message goes to
    one of N partition queues by the value of its ``Message.partition_by`` field, and each
    partition is consumed by one process at a time (the one with the highest consumer
    priority there, drawn at random per process; another takes over when it stops or has
    its prefetch full). So one workflow's messages reach the process that cached its state.
    Give every process of the endpoint the same ``partitions``: a process with a different
    number, or with none on a partitioned endpoint, is refused (processes lay the endpoint
    out one at a time, holding the exclusive queue ``<queue>.layout-lock``). A process
    holds up to ``partition_prefetch`` messages per partition at once: the more, the less
    often a burst spills over to another process (which then reads the state afresh), and
    the more messages wait in a process that stalls, until its connection is given up and
    the broker delivers them to another. Messages without a partition key, and retries, go
    through the endpoint queue.

    The connection reconnects by itself; a publish made while it is away waits up to
    ``publish_timeout`` seconds for it. The password in the URL is never logged.
    """

    def __init__(
        self,
        url: str,
        *,
        queue: str,
        prefix: str = "busflow",
        queue_type: QueueType | None = None,
        retry_delays: Iterable[float] = DEFAULT_RETRY_DELAYS,
        partitions: int = 0,
        partition_prefetch: int = 50,
        connect_timeout: float = 10.0,
        publish_timeout: float = 30.0,
    ) -> None:
        check_url(url)
        if queue_type not in (None, "quorum", "classic"):
            raise ConfigurationError(
                f"queue_type must be 'quorum', 'classic' or None, not {queue_type!r}"
            )
        if isinstance(partition_prefetch, bool) or not (
            isinstance(partition_prefetch, int) and partition_prefetch >= 1
        ):
            raise ConfigurationError(
                f"partition_prefetch must be a whole number from 1, not {partition_prefetch!r}"
            )
        self.topology = Topology(queue, prefix, tuple(retry_delays), partitions)
        self._partition_prefetch = partition_prefetch
        self._url = url
        self._hosts = hosts_of(url)
        self._queue_type = queue_type
        self._connect_timeout = connect_timeout
        self._publish_timeout = publish_timeout
        self._logger = with_fields(logging.getLogger("busflow.rabbitmq"))
        self._connection: AbstractRobustConnection | None = None
        self._sockets: NoDelaySockets | None = None
        self._publisher: AbstractRobustChannel | None = None
        self._consumer: AbstractRobustChannel | None = None
        """Held here: the robust connection keeps its channels weakly, and restores only
        those still alive after a reconnection."""
        self._partition_consumer: AbstractRobustChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._declaring: dict[str, asyncio.Future[AbstractExchange]] = {}
        self._declared_exchanges: set[str] = set()
        """Every exchange this transport declared, for ``delete``."""
        self._deliveries: asyncio.Queue[Delivery] = asyncio.Queue()
        self.queue_type: QueueType | None = None
        """The type of the endpoint's queues, once started."""

    def __repr__(self) -> str:
        partitions = f", partitions={self.topology.partitions}" if self.topology.partitions else ""
        return (
            f"RabbitMQTransport({redact_uri(self._url)!r}, queue={self.topology.queue!r}"
            f"{partitions})"
        )

    @property
    def queue(self) -> str:
        return self.topology.queue

    @property
    def tcp_nodelay(self) -> bool | None:
        """Whether the connection's socket has TCP_NODELAY on (read from the socket)."""
        return None if self._sockets is None else self._sockets.tcp_nodelay

    # lifecycle

    async def start(self, subscription: Subscription) -> None:
        """Connect; declare the endpoint's queues and bindings; start consuming.

        A bus that handles nothing only sends: then no queue is declared.
        """
        if self._connection is not None:
            raise BusError(f"{self!r} is already started")
        connection, self._sockets = await connect(
            self._url,
            connect_timeout=self._connect_timeout,
            name=f"busflow {self.topology.queue}",
        )
        self._connection = connection
        try:
            self._publisher = await connection.channel(publisher_confirms=True)
            version = server_version(connection)
            self.queue_type = self._queue_type or (
                "quorum" if version >= QUORUM_SINCE else "classic"
            )
            if subscription.message_names:
                await self._declare_endpoint(subscription)
        except BaseException:
            await self.close()
            raise
        self._logger.info(
            "RabbitMQ at %s: queue %s (%s) bound to %d message name(s), prefetch %d, partitions %d",
            self._hosts,
            self.topology.queue,
            self.queue_type,
            len(subscription.message_names),
            subscription.prefetch,
            self.topology.partitions,
        )

    async def _declare_endpoint(self, subscription: Subscription) -> None:
        assert self._connection is not None
        assert self._publisher is not None
        assert self.queue_type is not None
        topology, queue_type = self.topology, self.queue_type
        with declaring(self._hosts):
            for milliseconds, name in topology.retry_queues.items():
                await self._publisher.declare_queue(
                    name,
                    durable=True,
                    arguments=topology.retry_queue_arguments(milliseconds, queue_type),
                )
            await self._publisher.declare_queue(
                topology.dead_letter_queue,
                durable=True,
                arguments=topology.queue_arguments(queue_type),
            )
            exchanges = [await self._exchange(name) for name in sorted(subscription.message_names)]
            self._consumer = await self._connection.channel(publisher_confirms=False)
            await self._consumer.set_qos(prefetch_count=subscription.prefetch)
            queue = await self._consumer.declare_queue(
                topology.queue, durable=True, arguments=topology.queue_arguments(queue_type)
            )
            async with layout_lock(self._connection, topology, self._hosts):
                await refuse_another_layout(self._connection, topology, self._hosts)
                if topology.partitions:
                    self._partition_consumer = await declare_partitions(
                        self._connection,
                        topology,
                        queue_type,
                        endpoint_queue=queue,
                        exchanges=exchanges,
                        prefetch=self._partition_prefetch,
                        on_delivery=self._on_delivery,
                    )
                else:
                    for exchange in exchanges:
                        # Not restored by the robust queue: after a reconnection the
                        # endpoint may be partitioned (see _bind_again).
                        await queue.bind(exchange, robust=False)
                    names = [exchange.name for exchange in exchanges]
                    self._consumer.reopen_callbacks.add(functools.partial(self._bind_again, names))
            await queue.consume(self._on_delivery)

    async def _bind_again(self, exchanges: list[str], *_: Any) -> None:
        connection = self._connection
        if connection is None:
            return
        try:
            await bind_endpoint_queue(
                connection, self.topology, self._hosts, exchanges, self._logger
            )
        except Exception as error:  # the next reconnection tries again
            self._logger.error(
                "queue %s: binding it again after a reconnection failed: %s",
                self.topology.queue,
                reason_of(error),
            )

    async def close(self) -> None:
        """Close the connection: the broker takes back every delivery not settled."""
        connection, self._connection = self._connection, None
        self._publisher = self._consumer = self._partition_consumer = None
        self._exchanges.clear()
        self._declaring.clear()
        self._deliveries = asyncio.Queue()
        if connection is not None:
            await connection.close()

    async def delete(self, message_names: Iterable[str] = ()) -> None:
        """Delete the endpoint's queues, with the messages in them, and the exchanges of
        ``message_names`` and of every message this transport declared, each only if no
        queue is bound to it any more. For tests and tear-down."""
        exchanges = self._declared_exchanges | {
            self.topology.exchange(name) for name in message_names
        }
        connection, _ = await connect(
            self._url,
            connect_timeout=self._connect_timeout,
            name=f"busflow {self.queue} (delete)",
        )
        try:
            channel = await connection.channel()
            for queue in self.topology.all_queues():
                await channel.queue_delete(queue)
            if self.topology.partitions:
                await channel.exchange_delete(self.topology.partition_exchange)
            for exchange in sorted(exchanges):
                with contextlib.suppress(aiormq.exceptions.ChannelPreconditionFailed):
                    await channel.exchange_delete(exchange, if_unused=True)
                if channel.is_closed:  # an exchange still in use closed it
                    channel = await connection.channel()
        finally:
            await connection.close()

    # sending

    async def send(self, message: TransportMessage) -> None:
        """Send a command to the endpoints that handle it. Raises ``UnroutableMessageError``
        if no queue is bound to its exchange: no endpoint that handles it has started."""
        what = f"{message.name} (message id {message.message_id})"
        exchange = await self._exchange(message.name)
        routing_key = bucket_of(message.partition_key)
        await self._publish(exchange, encode(message), what, routing_key=routing_key)

    async def publish(self, message: TransportMessage) -> None:
        """Publish an event to every endpoint bound to it; with none, it goes nowhere."""
        what = f"{message.name} (message id {message.message_id})"
        exchange = await self._exchange(message.name)
        routing_key = bucket_of(message.partition_key)
        await self._publish(
            exchange, encode(message), what, routing_key=routing_key, mandatory=False
        )

    async def _publish(
        self,
        exchange: AbstractExchange,
        message: AbstractMessage,
        what: str,
        *,
        routing_key: str = "",
        mandatory: bool = True,
    ) -> None:
        await publish(
            exchange,
            message,
            channel=self._channel(),
            routing_key=routing_key,
            mandatory=mandatory,
            what=what,
            confirm_timeout=self._publish_timeout,
            hosts=self._hosts,
        )

    async def _exchange(self, message_name: str) -> AbstractExchange:
        """The message name's exchange, declared once per connection however many sends
        ask for it at the same time."""
        exchange = self._exchanges.get(message_name)
        if exchange is not None:
            return exchange
        declaration = self._declaring.get(message_name)
        if declaration is None:
            declaration = asyncio.ensure_future(self._declare_exchange(message_name))
            self._declaring[message_name] = declaration
            declaration.add_done_callback(lambda _: self._declaring.pop(message_name, None))
        return await asyncio.shield(declaration)

    async def _declare_exchange(self, message_name: str) -> AbstractExchange:
        name = self.topology.exchange(message_name)
        with declaring(self._hosts):
            exchange = await self._channel().declare_exchange(
                name, ExchangeType.FANOUT, durable=True
            )
        self._declared_exchanges.add(name)
        self._exchanges[message_name] = exchange
        return exchange

    def _channel(self) -> AbstractRobustChannel:
        if self._publisher is None:
            raise BusError(f"{self!r} is not started: start it (the bus does) before sending")
        return self._publisher

    # receiving and settling

    async def _on_delivery(self, incoming: AbstractIncomingMessage) -> None:
        message, problems = decode(incoming)
        if not problems:
            self._deliveries.put_nowait(Delivery(message, incoming))
            return
        dead_letter = DeadLetter(
            message=message,
            error_type=DECODE_ERROR,
            error_text=f"busflow cannot read this message: {'; '.join(problems)}",
            traceback="",
            attempts=message.attempt,
            handler="busflow",
        )
        self._logger.error(
            "a message on %s (message id %s) cannot be read; dead-lettered: %s",
            self.topology.queue,
            message.message_id,
            dead_letter.error_text,
        )
        await self.dead_letter(Delivery(message, incoming), dead_letter)

    async def receive(self) -> Delivery:
        while True:
            delivery = await self._deliveries.get()
            if _channel_open(delivery):
                return delivery
            # Its channel closed (the connection was lost): the broker delivers it again.

    async def complete(self, delivery: Delivery) -> None:
        await self._acknowledge(delivery)

    async def retry(self, delivery: Delivery, message: TransportMessage, delay: float) -> None:
        """Put ``message`` in the retry queue for ``delay``, then acknowledge the delivery."""
        if not _channel_open(delivery):
            self._given_back(delivery, "retried")
            return
        await self._publish(
            self._channel().default_exchange,
            encode(message),
            f"the retry of {message.name} (message id {message.message_id})",
            routing_key=self.topology.retry_queue_for(delay),
        )
        await self._acknowledge(delivery)

    async def dead_letter(self, delivery: Delivery, dead_letter: DeadLetter) -> None:
        """Put the message in ``<queue>.dead-letter``, then acknowledge the delivery."""
        if not _channel_open(delivery):
            self._given_back(delivery, "dead-lettered")
            return
        message = dead_letter.message
        await self._publish(
            self._channel().default_exchange,
            encode_dead_letter(dead_letter),
            f"the dead letter of {message.name} (message id {message.message_id})",
            routing_key=self.topology.dead_letter_queue,
        )
        await self._acknowledge(delivery)

    async def _acknowledge(self, delivery: Delivery) -> None:
        incoming: AbstractIncomingMessage = delivery.receipt
        try:
            await incoming.ack()
        except aiormq.exceptions.ChannelInvalidStateError:
            self._given_back(delivery, "acknowledged")

    def _given_back(self, delivery: Delivery, action: str) -> None:
        self._logger.warning(
            "%s (message id %s) was not %s: the connection it came on was lost, so the broker "
            "delivers it again",
            delivery.message.name,
            delivery.message.message_id,
            action,
        )


def _channel_open(delivery: Delivery) -> bool:
    incoming: Any = delivery.receipt
    try:
        incoming.channel  # noqa: B018 - raises once the channel is closed
    except aiormq.exceptions.ChannelInvalidStateError:
        return False
    return True
