"""The RabbitMQ tier: endpoints of their own on its broker, deleted after each test."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest

from busflow.rabbitmq import RabbitMQTransport
from tests.conftest import RabbitMQServer, label_backend


@dataclass
class Endpoint:
    """A queue name and a prefix no other test uses; every transport made here is deleted."""

    url: str
    name: str
    transports: list[RabbitMQTransport] = field(default_factory=list)
    message_names: list[str] = field(default_factory=list)
    """Messages whose exchanges to delete too: those that another process declared."""

    def transport(self, **options: Any) -> RabbitMQTransport:
        options.setdefault("queue", self.name)
        options.setdefault("prefix", self.name)
        transport = RabbitMQTransport(options.pop("url", self.url), **options)
        self.transports.append(transport)
        return transport


def unique_name() -> str:
    return f"busflow-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def _label(request: pytest.FixtureRequest, rabbitmq: RabbitMQServer) -> None:
    """Every test here is of the RabbitMQ tier: it runs, or skips, with the broker."""
    label_backend(request, rabbitmq.label)


@pytest.fixture
async def endpoint(rabbitmq: RabbitMQServer) -> AsyncIterator[Endpoint]:
    made = Endpoint(rabbitmq.url, unique_name())
    try:
        yield made
    finally:
        for transport in made.transports:
            await transport.close()
        for transport in made.transports or [made.transport()]:
            await transport.delete(made.message_names)


async def eventually(condition: Callable[[], Awaitable[bool]], *, within: float = 10) -> None:
    """Wait until ``condition()`` holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, f"not so after {within} s"
        await asyncio.sleep(0.02)


@pytest.fixture
async def channel(rabbitmq: RabbitMQServer) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A plain aio-pika channel, to look at the broker as an operator's tool would."""
    connection = await aio_pika.connect(rabbitmq.url)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl`` on the local broker; what it printed."""
    done = subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)
    return done.stdout.decode()


async def message_count(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return declared.declaration_result.message_count or 0
