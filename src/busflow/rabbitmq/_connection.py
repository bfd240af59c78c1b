"""Connecting to RabbitMQ: a robust connection, TCP_NODELAY on its socket, one-line errors.

aio-pika's robust connection reconnects after the broker or the network goes away, and
declares again what was declared through it. Its socket is opened here, through aiormq's
transport factory, so that TCP_NODELAY can be set and checked: without it a small frame (an
acknowledgement, a publish) can wait some 40 ms for the peer's delayed ACK.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustConnection, ConnectionParameter
from aiormq.connection import TCPTransportFactory, TLSTransportFactory
from yarl import URL

from busflow._errors import ConfigurationError
from busflow._logs import with_fields
from busflow._uri import hosts_of, mask_password, redact_uri
from busflow.rabbitmq._errors import RabbitMQConnectionError, RabbitMQError

__all__ = ["NoDelaySockets", "connect", "reason_of", "server_version"]

_logger = with_fields(logging.getLogger("busflow.rabbitmq"))


class NoDelaySockets(aiormq.TransportFactory):
    """Opens the connection's socket (TCP, or TLS for ``amqps``) with TCP_NODELAY set."""

    def __init__(self) -> None:
        self._socket: Any = None

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        opener = TLSTransportFactory() if url.scheme == "amqps" else TCPTransportFactory()
        reader, writer = await opener.create(url, **kwargs)
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY):
                _logger.warning(
                    "TCP_NODELAY could not be set on the connection to RabbitMQ at %s: each "
                    "acknowledgement and publish may wait for the peer's delayed ACK",
                    hosts_of(str(url)),
                )
        self._socket = sock
        return reader, writer

    @property
    def tcp_nodelay(self) -> bool | None:
        """Whether the socket of the current connection has TCP_NODELAY on, read from the
        socket itself; ``None`` before the first connection or on a non-TCP socket."""
        sock = self._socket
        if sock is None or sock.fileno() < 0:
            return None
        return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def _factory(value: Any) -> NoDelaySockets:
    if not isinstance(value, NoDelaySockets):
        raise ValueError("not a NoDelaySockets")  # aio-pika then leaves the option out
    return value


class _Connection(aio_pika.RobustConnection):
    """aio-pika's robust connection, passing ``transport_factory`` on to aiormq."""

    PARAMETERS = (
        *aio_pika.RobustConnection.PARAMETERS,
        ConnectionParameter(name="transport_factory", parser=_factory, is_kwarg=True),
    )


def check_url(url: str) -> None:
    scheme = url.partition("://")[0]
    if scheme not in ("amqp", "amqps"):
        raise ConfigurationError(
            f"{redact_uri(url)} is not an AMQP URL: give amqp://USER:PASSWORD@HOST:5672/VHOST"
        )


async def connect(
    url: str, *, connect_timeout: float, name: str, reconnect_interval: float = 1.0
) -> tuple[AbstractRobustConnection, NoDelaySockets]:
    """A robust connection to ``url``, named ``name`` in the management UI."""
    check_url(url)
    sockets = NoDelaySockets()
    # Built as aio_pika.connect_robust builds it, but with options that are not strings:
    # connect_robust would fold them into the URL's query.
    connection = _Connection(
        URL(url),
        client_properties={"connection_name": name},
        transport_factory=sockets,
        reconnect_interval=reconnect_interval,
    )
    try:
        await connection.connect(timeout=connect_timeout)
    except (aiormq.exceptions.AMQPError, OSError, TimeoutError) as error:
        await connection.close()
        raise _connect_error(url, connect_timeout, error) from None
    return connection, sockets


def _connect_error(url: str, timeout: float, error: BaseException) -> RabbitMQError:
    hosts = hosts_of(url)
    if isinstance(error, aiormq.exceptions.ProbableAuthenticationError):
        user = URL(url).user or "guest"
        return RabbitMQConnectionError(
            f"RabbitMQ at {hosts} refused the login of user {user!r}; check the user name and "
            "password in the URL"
        )
    if isinstance(error, aiormq.exceptions.InvalidFrameError | aiormq.exceptions.ConnectionClosed):
        vhost = URL(url).path[1:] or "/"
        return RabbitMQConnectionError(
            f"RabbitMQ at {hosts} refused the connection to virtual host {vhost!r} "
            f"({reason_of(error, url)}); check that the virtual host exists and the user may "
            "use it"
        )
    return RabbitMQConnectionError(
        f"cannot reach RabbitMQ at {hosts} within {timeout:g} s ({reason_of(error, url)}); "
        "check that the server runs and the address is right"
    )


def reason_of(error: BaseException, url: str | None = None) -> str:
    """The useful part of a driver error, in one line, without a password."""
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, TimeoutError) and not str(error):
        text = "timed out"
    return mask_password(text, url)


def server_version(connection: AbstractRobustConnection) -> tuple[int, ...]:
    """The broker's version, as numbers: ``(3, 10, 8)``; ``()`` if it does not say."""
    transport = connection.transport
    properties = transport.connection.server_properties if transport is not None else {}
    version = properties.get("version", b"")
    text = version.decode() if isinstance(version, bytes) else str(version)
    numbers: list[int] = []
    for part in text.split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)
