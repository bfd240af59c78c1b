"""An endpoint's layout on the broker, one shared queue or N partitions, and what keeps every
process of the endpoint on the same one.

Changing the layout moves bindings: a partitioned endpoint binds ``<queue>.partitions`` to
the message exchanges in place of its queue. Two processes that disagree would both receive
the same messages, so a process lays out its endpoint holding ``<queue>.layout-lock``, an
exclusive queue (the broker lets one connection hold it, and frees it when that connection
ends), checks what is there, and refuses a layout other than its own. After a reconnection
it lays its bindings out again, since another process may have changed them meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal

import aiormq
import aiormq.abc
from aio_pika import ExchangeType
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from busflow.rabbitmq._errors import RabbitMQTopologyError
from busflow.rabbitmq._topology import PARTITIONS_ARGUMENT, QueueType, Topology

__all__ = [
    "PRIORITY_RANGE",
    "bind_endpoint_queue",
    "declare_partitions",
    "layout_lock",
    "refuse_another_layout",
]

PRIORITY_RANGE = 1_000_000
"""A process's consumer priority on each partition is drawn from 1 to this: wide enough
that two processes almost never tie."""
LOCK_WITHIN = 30.0
"""Seconds to wait for another process to finish laying out the endpoint."""

OnDelivery = Callable[[AbstractIncomingMessage], Awaitable[None]]


def _raw(connection: AbstractRobustConnection) -> aiormq.abc.AbstractConnection:
    transport = connection.transport
    assert transport is not None, "connected"
    return transport.connection


@contextlib.asynccontextmanager
async def _plain_channel(
    connection: AbstractRobustConnection,
) -> AsyncIterator[aiormq.abc.AbstractChannel]:
    """A channel of the connection that aio-pika does not reopen (the broker closes one
    after a 404), closed after the block."""
    channel = await _raw(connection).channel()
    try:
        yield channel
    finally:
        with contextlib.suppress(Exception):  # closed already, or the connection is gone
            await channel.close()


@contextlib.asynccontextmanager
async def layout_lock(
    connection: AbstractRobustConnection, topology: Topology, hosts: str
) -> AsyncIterator[None]:
    """Hold ``<queue>.layout-lock`` while laying out the endpoint."""
    name = f"{topology.queue}.layout-lock"
    deadline = time.monotonic() + LOCK_WITHIN
    while True:
        channel = await _raw(connection).channel()
        try:
            await channel.queue_declare(name, exclusive=True, auto_delete=False)
            break
        except aiormq.exceptions.ChannelLockedResource:
            if time.monotonic() > deadline:
                raise RabbitMQTopologyError(
                    f"RabbitMQ at {hosts}: another process has held {name!r} for more than "
                    f"{LOCK_WITHIN:.0f} s while laying out queue {topology.queue!r}; if none "
                    "is starting, delete that queue"
                ) from None
            await asyncio.sleep(0.02 + random.random() / 20)  # noqa: S311 - spreads, not secret
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # the connection's end frees it anyway
            await channel.queue_delete(name)
            await channel.close()


async def _exists(
    connection: AbstractRobustConnection, kind: Literal["exchange", "queue"], name: str
) -> bool:
    """Whether the broker has it, asked on a plain channel of its own: asking for one that
    does not exist closes the channel."""
    async with _plain_channel(connection) as channel:
        try:
            if kind == "exchange":
                await channel.exchange_declare(name, passive=True)
            else:
                await channel.queue_declare(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
    return True


async def refuse_another_layout(
    connection: AbstractRobustConnection, topology: Topology, hosts: str
) -> None:
    """Raise ``RabbitMQTopologyError`` if the endpoint is laid out otherwise than
    ``topology``: partitioned when it is not, or into another number of partitions."""
    queue, partitions = topology.queue, topology.partitions
    if not await _exists(connection, "exchange", topology.partition_exchange):
        return  # one shared queue, or new: either layout may take it
    how = 'see "Changing partitions" in busflow\'s README'
    if not partitions:
        raise RabbitMQTopologyError(
            f"RabbitMQ at {hosts}: queue {queue!r} is partitioned (exchange "
            f"{topology.partition_exchange!r} routes its messages to partition queues), and "
            f"this transport has partitions=0; start it with the endpoint's partitions, or "
            f"stop partitioning the endpoint first ({how}). Nothing was changed"
        )
    if not await _exists(connection, "queue", f"{queue}.partition-{partitions - 1}") or (
        await _exists(connection, "queue", f"{queue}.partition-{partitions}")
    ):
        raise RabbitMQTopologyError(
            f"RabbitMQ at {hosts}: queue {queue!r} is partitioned already, into another "
            f"number of partitions than {partitions} (see its queues '{queue}.partition-<n>'); "
            f"start every process of the endpoint with the same partitions, or change them "
            f"first ({how}). Nothing was changed"
        )


async def bind_endpoint_queue(
    connection: AbstractRobustConnection,
    topology: Topology,
    hosts: str,
    exchanges: Sequence[str],
    logger: logging.Logger,
) -> None:
    """After a reconnection, bind the endpoint queue (one shared queue) to the message
    exchanges again, unless the endpoint was partitioned meanwhile: then bindings stay as
    they are, and this process receives only what goes through its queue."""
    async with layout_lock(connection, topology, hosts):
        if await _exists(connection, "exchange", topology.partition_exchange):
            logger.error(
                "queue %s was partitioned while this process was reconnecting; it now "
                "receives only retries and messages without a partition key: restart it with "
                "the endpoint's partitions",
                topology.queue,
            )
            return
        async with _plain_channel(connection) as channel:
            for exchange in exchanges:
                await channel.queue_bind(topology.queue, exchange, routing_key=topology.queue)


async def declare_partitions(
    connection: AbstractRobustConnection,
    topology: Topology,
    queue_type: QueueType,
    *,
    endpoint_queue: AbstractQueue,
    exchanges: Sequence[AbstractExchange],
    prefetch: int,
    on_delivery: OnDelivery,
) -> AbstractRobustChannel:
    """Declare the partition queues and ``<queue>.partitions``, bind it to the message
    exchanges in place of the endpoint queue, and consume each partition at a random
    priority, on a channel of their own (for a prefetch of their own), which it returns.

    Call it holding the layout lock, after ``refuse_another_layout``."""
    channel = await connection.channel(publisher_confirms=False)
    await channel.set_qos(prefetch_count=prefetch)
    # The queues before the exchange: a process that finds the exchange finds them too.
    queues: dict[str, AbstractQueue] = {topology.queue: endpoint_queue}
    for name in topology.partition_queues:
        queues[name] = await channel.declare_queue(
            name, durable=True, arguments=topology.queue_arguments(queue_type)
        )
    router = await channel.declare_exchange(
        topology.partition_exchange,
        ExchangeType.DIRECT,
        durable=True,
        arguments={PARTITIONS_ARGUMENT: topology.partitions},
    )
    for routing_key, name in topology.partition_bindings():
        await queues[name].bind(router, routing_key=routing_key)
    names = [exchange.name for exchange in exchanges]
    for exchange in exchanges:
        await router.bind(exchange)
    # After the partitions are bound, so that nothing published meanwhile is lost (what is
    # published in between may arrive twice, once each way).
    await _unbind_endpoint_queue(connection, topology, names)

    async def unbind_again(*_: Any) -> None:
        # Restored after a reconnection: a process of the old layout may have bound the
        # endpoint queue again meanwhile.
        await _unbind_endpoint_queue(connection, topology, names)

    channel.reopen_callbacks.add(unbind_again)
    for name in topology.partition_queues:
        priority = random.randint(1, PRIORITY_RANGE)  # noqa: S311 - spreads, not secret
        await queues[name].consume(on_delivery, arguments={"x-priority": priority})
    return channel


async def _unbind_endpoint_queue(
    connection: AbstractRobustConnection, topology: Topology, exchanges: Sequence[str]
) -> None:
    async with _plain_channel(connection) as channel:
        for exchange in exchanges:
            # The routing key that aio-pika binds a queue with by default: its name.
            await channel.queue_unbind(topology.queue, exchange, routing_key=topology.queue)
