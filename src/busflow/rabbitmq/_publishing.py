"""Publishing with a confirm, through a lost connection; declaring, with errors that say what.

A publish returns once the broker confirmed it. If the connection is lost on the way, it
waits for the robust connection to come back and publishes again, until its timeout: the
message may then reach the broker twice, never not at all (its id is the same both times).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import aiormq
from aio_pika.abc import AbstractExchange, AbstractMessage, AbstractRobustChannel

from busflow._logs import with_fields
from busflow.rabbitmq._connection import reason_of
from busflow.rabbitmq._errors import RabbitMQError, RabbitMQTopologyError, UnroutableMessageError

__all__ = ["broker_errors", "declaring", "publish"]

_logger = with_fields(logging.getLogger("busflow.rabbitmq"))

CONNECTION_LOST = (
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
)
"""What a publish raises when the connection or its channel went away under it."""


async def publish(
    exchange: AbstractExchange,
    message: AbstractMessage,
    *,
    channel: AbstractRobustChannel,
    routing_key: str = "",
    mandatory: bool,
    what: str,
    confirm_timeout: float,
    hosts: str,
) -> None:
    """Publish ``message`` and wait for the broker's confirm.

    ``mandatory``: a message that no queue is bound to receive raises
    ``UnroutableMessageError``; otherwise the broker drops it. Waits at most
    ``confirm_timeout`` seconds, reconnection included.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + confirm_timeout
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                result = await exchange.publish(message, routing_key, mandatory=mandatory)
            break
        except TimeoutError:
            raise RabbitMQError(
                f"RabbitMQ at {hosts} did not confirm {what} within {confirm_timeout:g} s; "
                "check the broker (its connection, disk and memory alarms)"
            ) from None
        except aiormq.exceptions.DeliveryError as error:
            raise RabbitMQError(
                f"RabbitMQ at {hosts} refused {what} ({reason_of(error)}); check the broker's "
                "log and its queue limits"
            ) from None
        except CONNECTION_LOST as error:
            _logger.info(
                "the connection to RabbitMQ at %s was lost while publishing %s (%s); "
                "publishing again once it is back",
                hosts,
                what,
                reason_of(error),
            )
            try:
                async with asyncio.timeout_at(deadline):
                    await channel.ready()
            except TimeoutError:
                raise RabbitMQError(
                    f"could not publish {what}: the connection to RabbitMQ at {hosts} was lost "
                    f"and did not come back within {confirm_timeout:g} s"
                ) from None
    if isinstance(result, aiormq.abc.DeliveredMessage):
        raise UnroutableMessageError(
            f"no queue receives {what}: nothing is bound to the exchange {exchange.name!r} "
            f"on RabbitMQ at {hosts}; start an endpoint that handles it first"
        )


@contextlib.contextmanager
def declaring(hosts: str) -> Iterator[None]:
    """Turn the broker's refusal to declare something into a busflow error."""
    try:
        yield
    except aiormq.exceptions.ChannelPreconditionFailed as error:
        raise RabbitMQTopologyError(
            f"RabbitMQ at {hosts} has it with other arguments: {reason_of(error)}; delete it "
            "(nothing was changed), or declare it as it is (for a queue, pass the queue_type "
            "it has)"
        ) from None
    except aiormq.exceptions.ChannelNotFoundEntity as error:
        raise RabbitMQTopologyError(
            f"RabbitMQ at {hosts} does not have it: {reason_of(error)}"
        ) from None
    except aiormq.exceptions.ChannelAccessRefused as error:
        raise RabbitMQError(
            f"RabbitMQ at {hosts} refused: {reason_of(error)}; give the user configure, write "
            "and read permissions on the virtual host"
        ) from None


@contextlib.contextmanager
def broker_errors(hosts: str, doing: str) -> Iterator[None]:
    """Turn any other failure of the broker or the connection into a ``RabbitMQError``."""
    try:
        yield
    except (aiormq.exceptions.AMQPError, *CONNECTION_LOST) as error:
        raise RabbitMQError(
            f"{doing} failed on RabbitMQ at {hosts}: {reason_of(error)} ({type(error).__name__})"
        ) from None
