"""The bus contract suite, unchanged, on ``RabbitMQTransport``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from busflow import DeadLetter, Transport
from busflow.rabbitmq import DeadLetterQueue, RabbitMQTransport
from busflow.testing import BusContract
from tests.conftest import RabbitMQServer


class TestRabbitMQTransport(BusContract):
    @pytest.fixture(params=[0, 4], ids=["one-queue", "4-partitions"])
    async def transport(
        self, rabbitmq: RabbitMQServer, request: pytest.FixtureRequest
    ) -> AsyncIterator[Transport]:
        tag = f"busflow-test-{uuid.uuid4().hex[:8]}"
        transport = RabbitMQTransport(rabbitmq.url, queue=tag, prefix=tag, partitions=request.param)
        self.url = rabbitmq.url
        try:
            yield transport
        finally:
            await transport.close()
            await transport.delete()

    async def dead_letters_of(self, transport: Transport) -> list[DeadLetter]:
        assert isinstance(transport, RabbitMQTransport)
        async with DeadLetterQueue(self.url, queue=transport.queue) as dead_letters:
            return await dead_letters.list()
