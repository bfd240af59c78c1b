"""The errors of the RabbitMQ transport: busflow errors, with the broker's reason in one line."""

from __future__ import annotations

from busflow._errors import BusflowError

__all__ = [
    "RabbitMQConnectionError",
    "RabbitMQError",
    "RabbitMQTopologyError",
    "UnroutableMessageError",
]


class RabbitMQError(BusflowError):
    """Talking to RabbitMQ failed. The message names the host, never a password.

    Retryable: the robust connection reconnects, so handling the message again may succeed.
    """

    retryable = True


class RabbitMQConnectionError(RabbitMQError):
    """RabbitMQ cannot be reached, or refused the login or the virtual host."""


class RabbitMQTopologyError(RabbitMQError):
    """A queue or exchange exists on the broker with other arguments than busflow declares
    (for example a classic queue where a quorum queue is declared). Nothing was changed."""

    retryable = False


class UnroutableMessageError(RabbitMQError):
    """A command was sent that no queue is bound to receive: no endpoint that handles it has
    started yet. The broker returned it; nothing was delivered."""
