"""The RabbitMQ tier: endpoints of their own on its broker, deleted after each test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

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
