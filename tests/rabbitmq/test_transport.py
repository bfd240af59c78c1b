"""What RabbitMQTransport promises beyond the bus contract, seen on the broker itself."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import uuid
from collections.abc import Awaitable, Callable, Iterator

import aio_pika
import pytest

from busflow import Bus, Message, MessageAttributes, RetryPolicy, TransportMessage
from busflow import Subscription as BusSubscription
from busflow.rabbitmq import (
    DeadLetterQueue,
    RabbitMQConnectionError,
    RabbitMQTopologyError,
    RabbitMQTransport,
    UnroutableMessageError,
)
from busflow.rabbitmq._topology import Topology
from tests.conftest import RabbitMQServer
from tests.rabbitmq.conftest import (
    Endpoint,
    eventually,
    message_count,
    rabbitmqctl,
    unique_name,
)


class Job(Message):
    message_name = "busflow-test.Job"
    key: str


def bus_on(
    transport: RabbitMQTransport,
    handler: Callable[[Job, MessageAttributes], Awaitable[None]],
    *,
    policy: RetryPolicy | None = None,
    dispose_timeout: float = 5.0,
) -> Bus:
    return (
        Bus.configure()
        .with_transport(transport)
        .with_handler(Job, handler)
        .with_concurrency(4)
        .with_retry_policy(policy or RetryPolicy(max_attempts=3, base_delay=0.001))
        .with_dispose_timeout(dispose_timeout)
        .build()
    )


# topology


async def test_start_declares_readable_names_for_exchanges_and_queues(
    endpoint: Endpoint, channel: aio_pika.abc.AbstractChannel
) -> None:
    async def nothing(message: Job, attributes: MessageAttributes) -> None:
        pass

    async with bus_on(endpoint.transport(), nothing):
        pass
    name = endpoint.name
    await channel.declare_exchange(f"{name}.busflow-test.Job", passive=True)
    for queue in (
        name,
        f"{name}.dead-letter",
        f"{name}.retry-10ms",
        f"{name}.retry-50ms",
        f"{name}.retry-200ms",
        f"{name}.retry-1s",
        f"{name}.retry-5s",
        f"{name}.retry-30s",
        f"{name}.retry-5min",
    ):
        assert await message_count(channel, queue) == 0


async def test_the_queues_are_quorum_queues_and_a_mismatch_is_a_one_line_error(
    endpoint: Endpoint,
) -> None:
    async def nothing(message: Job, attributes: MessageAttributes) -> None:
        pass

    quorum = endpoint.transport()
    async with bus_on(quorum, nothing):
        assert quorum.queue_type == "quorum"
    classic = endpoint.transport(queue_type="classic")
    with pytest.raises(RabbitMQTopologyError) as raised:
        await classic.start(BusSubscription(frozenset({Job.message_name}), prefetch=1))
    message = str(raised.value)
    assert "\n" not in message
    assert "PRECONDITION_FAILED - inequivalent arg" in message
    assert f"for queue '{endpoint.name}.retry-10ms'" in message
    assert "pass the queue_type" in message


def test_a_retry_waits_in_the_first_retry_queue_at_least_as_long_as_asked() -> None:
    topology = Topology("orders", "busflow")
    assert topology.retry_queue_for(0) == "orders.retry-10ms"
    assert topology.retry_queue_for(0.0031) == "orders.retry-10ms"
    assert topology.retry_queue_for(0.01) == "orders.retry-10ms"
    assert topology.retry_queue_for(0.0101) == "orders.retry-50ms"
    assert topology.retry_queue_for(0.7) == "orders.retry-1s"
    assert topology.retry_queue_for(86_400) == "orders.retry-5min"


async def test_a_burst_of_sends_of_a_new_name_declares_its_exchange_once(
    endpoint: Endpoint,
) -> None:
    handled: list[str] = []

    async def job(message: Job, attributes: MessageAttributes) -> None:
        handled.append(message.key)

    receiver = endpoint.transport()
    sender = endpoint.transport()
    async with bus_on(receiver, job):
        await sender.start(BusSubscription(frozenset(), prefetch=1))
        publisher = sender._channel()
        declarations: list[str] = []
        declare = publisher.declare_exchange

        async def counting_declare(name: str, *args: object, **kwargs: object) -> object:
            declarations.append(name)
            return await declare(name, *args, **kwargs)  # type: ignore[arg-type]

        publisher.declare_exchange = counting_declare  # type: ignore[method-assign, assignment]
        burst = [
            TransportMessage(
                Job.message_name, f"burst-{n}", Job(key=str(n)).model_dump_json().encode()
            )
            for n in range(50)
        ]
        await asyncio.gather(*(sender.send(message) for message in burst))

        async def all_handled() -> bool:
            return len(handled) == 50

        await eventually(all_handled)
    assert declarations == [f"{endpoint.name}.busflow-test.Job"]


async def test_tcp_nodelay_is_on_for_the_connection(endpoint: Endpoint) -> None:
    transport = endpoint.transport()
    await transport.start(BusSubscription(frozenset(), prefetch=1))
    assert transport.tcp_nodelay is True


# sending


async def test_a_command_nobody_handles_is_refused_and_an_event_nobody_wants_goes_nowhere(
    endpoint: Endpoint,
) -> None:
    transport = endpoint.transport()
    await transport.start(BusSubscription(frozenset(), prefetch=1))
    nobody = TransportMessage("busflow-test.Nobody", "m-1", b"{}")
    with pytest.raises(UnroutableMessageError) as raised:
        await transport.send(nobody)
    assert f"'{endpoint.name}.busflow-test.Nobody'" in str(raised.value)
    assert "start an endpoint that handles it first" in str(raised.value)
    await transport.publish(nobody)


async def test_messages_are_persistent_and_carry_their_name_id_and_attributes(
    endpoint: Endpoint, channel: aio_pika.abc.AbstractChannel
) -> None:
    transport = endpoint.transport()
    await transport.start(BusSubscription(frozenset({Job.message_name}), prefetch=1))
    await transport.close()  # the queue stays, bound, with nobody consuming it
    sender = endpoint.transport()
    await sender.start(BusSubscription(frozenset(), prefetch=1))
    await sender.send(
        TransportMessage(
            Job.message_name,
            "m-1",
            b'{"key":"k"}',
            correlation_id="c-1",
            attributes={"tenant": "t-1"},
            sticky_attributes={"workflow_id": "w-1"},
        )
    )
    queue = await channel.declare_queue(endpoint.name, passive=True)
    incoming = await queue.get(no_ack=True)
    assert incoming.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert (incoming.type, incoming.message_id, incoming.correlation_id) == (
        Job.message_name,
        "m-1",
        "c-1",
    )
    assert incoming.body == b'{"key":"k"}'
    assert incoming.headers["busflow-attempt"] == 1
    assert incoming.headers["busflow-attributes"] == '{"tenant":"t-1"}'
    assert incoming.headers["busflow-sticky-attributes"] == '{"workflow_id":"w-1"}'


# receiving


async def test_a_delivery_not_settled_when_its_process_stops_is_delivered_again(
    endpoint: Endpoint,
) -> None:
    started = asyncio.Event()
    seen: list[str | None] = []

    async def stuck(message: Job, attributes: MessageAttributes) -> None:
        started.set()
        await asyncio.Event().wait()

    async def job(message: Job, attributes: MessageAttributes) -> None:
        seen.append(attributes.message_id)

    first = bus_on(endpoint.transport(), stuck, dispose_timeout=0.1)
    await first.start()
    await first.send(Job(key="k"), MessageAttributes(message_id="the-job"))
    await asyncio.wait_for(started.wait(), 10)
    await first.dispose()  # the handler is cancelled; its delivery was never acknowledged

    async with bus_on(endpoint.transport(), job):

        async def seen_again() -> bool:
            return seen == ["the-job"]

        await eventually(seen_again)


async def test_a_retry_waits_in_a_retry_queue_not_in_the_consumer(
    endpoint: Endpoint, channel: aio_pika.abc.AbstractChannel
) -> None:
    attempts: list[int] = []

    async def flaky(message: Job, attributes: MessageAttributes) -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            raise ConnectionError("not yet")

    slow = RetryPolicy(max_attempts=3, base_delay=2.0, max_delay=2.0)  # 1 to 3 s: retry-5s
    async with bus_on(endpoint.transport(), flaky, policy=slow) as bus:
        await bus.send(Job(key="k"))

        async def waiting_in_the_retry_queue() -> bool:
            return await message_count(channel, f"{endpoint.name}.retry-5s") == 1

        await eventually(waiting_in_the_retry_queue)
        assert attempts == [1]
        await bus.wait_until_idle(timeout=15)
    assert attempts == [1, 2]


async def test_a_message_whose_headers_cannot_be_read_is_dead_lettered_and_work_goes_on(
    endpoint: Endpoint, channel: aio_pika.abc.AbstractChannel
) -> None:
    handled: list[str] = []

    async def job(message: Job, attributes: MessageAttributes) -> None:
        handled.append(message.key)

    async with bus_on(endpoint.transport(), job) as bus:
        exchange = await channel.get_exchange(f"{endpoint.name}.{Job.message_name}")
        poison = aio_pika.Message(
            b'{"key":"poison"}',
            type=Job.message_name,
            message_id="poison",
            headers={"busflow-attempt": "two", "busflow-attributes": "[1, 2]"},
        )
        await exchange.publish(poison, routing_key="")
        await bus.send(Job(key="after"))

        async def dead_lettered_and_handled() -> bool:
            return handled == ["after"] and (
                await message_count(channel, f"{endpoint.name}.dead-letter") == 1
            )

        await eventually(dead_lettered_and_handled)
    async with DeadLetterQueue(endpoint.url, queue=endpoint.name) as dead_letters:
        [dead] = await dead_letters.list()
    assert dead.message.message_id == "poison"
    assert dead.error_type == "busflow.MessageDecodeError"
    assert "busflow-attempt header is 'two'" in dead.error_text
    assert "busflow-attributes header is not a JSON object" in dead.error_text
    assert dead.handler == "busflow"


async def test_a_dead_letter_says_why_in_its_headers(
    endpoint: Endpoint, channel: aio_pika.abc.AbstractChannel
) -> None:
    async def broken(message: Job, attributes: MessageAttributes) -> None:
        raise ConnectionError("the provider is down")

    twice = RetryPolicy(max_attempts=2, base_delay=0.001)
    async with bus_on(endpoint.transport(), broken, policy=twice) as bus:
        await bus.send(Job(key="k"), MessageAttributes(message_id="the-job"))
        await bus.wait_until_idle(timeout=10)
    queue = await channel.declare_queue(f"{endpoint.name}.dead-letter", passive=True)
    incoming = await queue.get(no_ack=True)
    assert incoming.message_id == "the-job"
    assert incoming.type == Job.message_name
    assert incoming.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert incoming.headers["busflow-error-type"] == "builtins.ConnectionError"
    assert incoming.headers["busflow-error-text"] == "the provider is down"
    assert incoming.headers["busflow-attempts"] == 2
    assert str(incoming.headers["busflow-handler"]).endswith("broken")
    assert "ConnectionError: the provider is down" in str(incoming.headers["busflow-traceback"])


async def test_replay_sends_a_dead_letter_back_for_another_round(endpoint: Endpoint) -> None:
    calls: list[str] = []

    async def fails_until_fixed(message: Job, attributes: MessageAttributes) -> None:
        calls.append(message.key)
        if len(calls) == 1:
            raise ValueError("a bug, fixed in the next release")

    once = RetryPolicy(max_attempts=1)
    async with bus_on(endpoint.transport(), fails_until_fixed, policy=once) as bus:
        await bus.send(Job(key="k"), MessageAttributes(message_id="the-job"))
        await bus.wait_until_idle(timeout=10)
        async with DeadLetterQueue(endpoint.url, queue=endpoint.name) as dead_letters:
            assert [dead.message.message_id for dead in await dead_letters.list()] == ["the-job"]
            assert await dead_letters.replay("no-such-id") == 0
            assert await dead_letters.replay("the-job") == 1

            async def handled_again() -> bool:
                return calls == ["k", "k"]

            await eventually(handled_again)
            assert await dead_letters.list() == []


# connecting


async def test_an_unreachable_broker_is_a_one_line_error_naming_the_host() -> None:
    transport = RabbitMQTransport(
        "amqp://someone:s3cret-pw@127.0.0.1:1/", queue=unique_name(), connect_timeout=2
    )
    with pytest.raises(RabbitMQConnectionError) as raised:
        await transport.start(BusSubscription(frozenset(), prefetch=1))
    message = str(raised.value)
    assert message.startswith("cannot reach RabbitMQ at 127.0.0.1:1 within 2 s (")
    assert message.endswith("check that the server runs and the address is right")
    assert "s3cret-pw" not in message
    assert "s3cret-pw" not in repr(transport)


async def test_a_refused_login_is_a_one_line_error_without_the_password(
    rabbitmq: RabbitMQServer,
) -> None:
    scheme, _, rest = rabbitmq.url.partition("://")
    url = f"{scheme}://guest:not-the-password@{rest.rpartition('@')[2]}"
    transport = RabbitMQTransport(url, queue=unique_name())
    with pytest.raises(RabbitMQConnectionError) as raised:
        await transport.start(BusSubscription(frozenset(), prefetch=1))
    assert str(raised.value).startswith("RabbitMQ at ")
    assert "refused the login of user 'guest'; check the user name and password" in str(
        raised.value
    )
    assert "not-the-password" not in str(raised.value)


@pytest.fixture
def user_url(rabbitmq: RabbitMQServer) -> Iterator[tuple[str, str]]:
    """A RabbitMQ user of its own with a password found nowhere else: (URL, password)."""
    if os.environ.get("AMQP_URL") or shutil.which("rabbitmqctl") is None:
        pytest.skip("needs rabbitmqctl for the local broker, to add a user")
    user, password = unique_name(), f"pw-{uuid.uuid4().hex}"

    rabbitmqctl("add_user", user, password)
    try:
        rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        yield f"amqp://{user}:{password}@127.0.0.1:5672/", password
    finally:
        rabbitmqctl("delete_user", user)


async def test_the_password_is_never_logged_nor_shown(
    user_url: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    url, password = user_url
    caplog.set_level(logging.DEBUG)
    handled: list[str] = []

    async def job(message: Job, attributes: MessageAttributes) -> None:
        handled.append(message.key)

    name = unique_name()
    transport = RabbitMQTransport(url, queue=name, prefix=name)
    shown = [repr(transport)]
    try:
        async with bus_on(transport, job) as bus:
            await bus.send(Job(key="k"))
            await bus.wait_until_idle(timeout=10)
        wrong = RabbitMQTransport(url.replace(password, f"{password}-wrong"), queue=name)
        with pytest.raises(RabbitMQConnectionError) as refused:
            await wrong.start(BusSubscription(frozenset(), prefetch=1))
        shown += [repr(wrong), str(refused.value)]
    finally:
        await transport.delete()
    assert handled == ["k"]
    assert caplog.records, "nothing was logged: the check would prove nothing"
    assert password not in caplog.text
    assert password not in "\n".join(shown)
    rabbitmq_records = [r for r in caplog.records if r.name.startswith("busflow.rabbitmq")]
    assert rabbitmq_records, "the transport logged nothing: the check below would prove nothing"
    for record in rabbitmq_records:  # busflow's log fields are on every record, as on the bus's
        assert all(hasattr(record, field) for field in ("workflow_id", "message_id"))


async def test_a_message_of_an_unknown_name_or_none_is_dead_lettered_and_work_goes_on(
    endpoint: Endpoint, channel: aio_pika.abc.AbstractChannel
) -> None:
    handled: list[str] = []

    async def job(message: Job, attributes: MessageAttributes) -> None:
        handled.append(message.key)

    async with bus_on(endpoint.transport(), job) as bus:
        for name, message_id in (("busflow-test.Unknown", "unknown"), (None, "nameless")):
            stray = aio_pika.Message(b"{}", type=name, message_id=message_id)
            await channel.default_exchange.publish(stray, routing_key=endpoint.name)
        await bus.send(Job(key="after"))

        async def both_dead_lettered_and_handled() -> bool:
            return handled == ["after"] and (
                await message_count(channel, f"{endpoint.name}.dead-letter") == 2
            )

        await eventually(both_dead_lettered_and_handled)
    async with DeadLetterQueue(endpoint.url, queue=endpoint.name) as dead_letters:
        letters = {dead.message.message_id: dead for dead in await dead_letters.list()}
    assert letters["unknown"].error_type == "busflow.MessageDecodeError"
    assert "no handler here knows the message name 'busflow-test.Unknown'" in (
        letters["unknown"].error_text
    )
    assert letters["nameless"].error_type == "busflow.MessageDecodeError"
    assert "it has no message name" in letters["nameless"].error_text
