"""A partitioned RabbitMQ endpoint: messages with one partition key reach one process."""

from __future__ import annotations

import asyncio
import enum
import json
import os
import shutil
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from typing import ClassVar

import aio_pika
import pytest

from busflow import (
    Bus,
    ConfigurationError,
    MemoryTransport,
    Message,
    MessageAttributes,
    TransportMessage,
)
from busflow import Subscription as BusSubscription
from busflow.rabbitmq import RabbitMQTopologyError, RabbitMQTransport
from busflow.rabbitmq._topology import BUCKETS, Topology, bucket_of
from tests.rabbitmq.conftest import Endpoint, eventually, message_count, rabbitmqctl


class Keyed(Message):
    message_name = "busflow-test.Keyed"
    partition_by: ClassVar[str | None] = "key"
    key: str
    n: int


class Unkeyed(Message):
    message_name = "busflow-test.Unkeyed"
    n: int


def bus_on(
    transport: RabbitMQTransport,
    handler: Callable[[Keyed, MessageAttributes], Awaitable[None]],
    *,
    dispose_timeout: float = 5.0,
) -> Bus:
    return (
        Bus.configure()
        .with_transport(transport)
        .with_handler(Keyed, handler)
        .with_dispose_timeout(dispose_timeout)
        .build()
    )


def driver_of(endpoint: Endpoint) -> Bus:
    """A bus that only sends, on an endpoint queue of its own."""
    return Bus.configure().with_transport(endpoint.transport(queue=f"{endpoint.name}-d")).build()


# the topology and the message


def test_every_bucket_goes_to_one_partition_queue_and_no_key_to_the_endpoint_queue() -> None:
    topology = Topology("orders", "busflow", partitions=3)
    bindings = list(topology.partition_bindings())
    assert bindings[0] == ("", "orders")
    buckets = dict(bindings[1:])
    assert len(buckets) == BUCKETS
    assert set(buckets.values()) == {
        "orders.partition-0",
        "orders.partition-1",
        "orders.partition-2",
    }
    assert buckets["00"] == "orders.partition-0"
    assert buckets["ff"] == "orders.partition-0"  # 255 % 3
    assert buckets["01"] == "orders.partition-1"


def test_a_partition_key_hashes_to_the_same_bucket_everywhere() -> None:
    assert bucket_of(None) == ""
    # Pinned: a sender in another process, version or language must agree.
    assert (bucket_of("order-1"), bucket_of("1"), bucket_of("Zürich")) == ("48", "e4", "9e")
    assert len({bucket_of(f"order-{n}") for n in range(2000)}) == BUCKETS


@pytest.mark.parametrize("partitions", [-1, BUCKETS + 1, 2.0, True])
def test_partitions_outside_0_to_256_are_refused(partitions: object) -> None:
    with pytest.raises(ConfigurationError, match="partitions must be"):
        RabbitMQTransport("amqp://127.0.0.1/", queue="orders", partitions=partitions)  # type: ignore[arg-type]


def test_a_partition_key_that_is_not_a_field_is_refused_when_the_class_is_made() -> None:
    with pytest.raises(ConfigurationError, match=r"Bad.partition_by is 'order'"):

        class Bad(Message):
            partition_by = "order"
            order_id: str


class Color(enum.Enum):
    RED = "red"


class Typed(Message):
    partition_by = "value"
    value: int | uuid.UUID | Color | None


class Inherits(Keyed):
    pass


class Unpartitioned(Keyed):
    partition_by: ClassVar[str | None] = None


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (Typed(value=7), "7"),
        (Typed(value=uuid.UUID(int=1)), "00000000-0000-0000-0000-000000000001"),
        (Typed(value=Color.RED), "red"),
        (Typed(value=None), None),
        (Keyed(key="Zürich", n=1), "Zürich"),
        (Inherits(key="k", n=1), "k"),
        (Unpartitioned(key="k", n=1), None),
        (Unkeyed(n=1), None),
    ],
)
async def test_the_partition_key_is_the_field_as_it_is_on_the_wire(
    message: Message, expected: str | None
) -> None:
    published: list[TransportMessage] = []

    class Kept(MemoryTransport):
        async def publish(self, message: TransportMessage) -> None:
            published.append(message)

    async with Bus.configure().with_transport(Kept()).build() as bus:
        await bus.publish(message)
    [sent] = published
    assert sent.partition_key == expected


def test_a_field_named_as_what_message_keeps_for_itself_is_refused() -> None:
    with (
        pytest.warns(UserWarning, match="shadows an attribute"),  # pydantic's own
        pytest.raises(ConfigurationError, match="has a field named 'partition_by'"),
    ):

        class Clash(Message):
            partition_by: str  # type: ignore[misc]


async def test_a_message_travels_with_its_partition_key_and_is_routed_by_its_bucket(
    endpoint: Endpoint, channel: aio_pika.abc.AbstractChannel
) -> None:
    transport = endpoint.transport(partitions=4)
    await transport.start(BusSubscription(frozenset({Keyed.message_name}), prefetch=1))
    await transport.close()  # the queues stay, bound, with nobody consuming them
    sender = endpoint.transport()
    await sender.start(BusSubscription(frozenset(), prefetch=1))
    await sender.send(TransportMessage(Keyed.message_name, "m-1", b"{}", partition_key="k-1"))
    await sender.send(TransportMessage(Keyed.message_name, "m-2", b"{}"))
    partition = f"{endpoint.name}.partition-{int(bucket_of('k-1'), 16) % 4}"
    keyed = await (await channel.declare_queue(partition, passive=True)).get(no_ack=True)
    assert keyed.message_id == "m-1"
    assert keyed.routing_key == bucket_of("k-1")
    assert keyed.headers["busflow-partition-key"] == "k-1"
    unkeyed = await (await channel.declare_queue(endpoint.name, passive=True)).get(no_ack=True)
    assert unkeyed.message_id == "m-2"
    for n in range(4):
        assert await message_count(channel, f"{endpoint.name}.partition-{n}") == 0


# two processes


async def test_each_key_reaches_one_process_while_both_keep_up(endpoint: Endpoint) -> None:
    endpoint.message_names.append(Keyed.message_name)
    seen: dict[str, set[int]] = defaultdict(set)
    handled: list[int] = []

    def handler_of(process: int) -> Callable[[Keyed, MessageAttributes], Awaitable[None]]:
        async def handle(message: Keyed, attributes: MessageAttributes) -> None:
            seen[message.key].add(process)
            handled.append(message.n)
            await asyncio.sleep(0.001)

        return handle

    buses = [
        bus_on(endpoint.transport(partitions=16, partition_prefetch=200), handler_of(n))
        for n in range(2)
    ]
    driver = driver_of(endpoint)
    async with buses[0], buses[1], driver:
        for n in range(200):
            await driver.send(Keyed(key=f"k-{n % 40}", n=n))

        async def all_handled() -> bool:
            return len(handled) == 200

        await eventually(all_handled, within=30)
    assert sorted(handled) == list(range(200))
    assert {key: len(processes) for key, processes in seen.items()} == {
        f"k-{n}": 1 for n in range(40)
    }
    assert {min(processes) for processes in seen.values()} == {0, 1}, "one process did it all"


async def test_when_a_process_stops_another_takes_its_partitions_and_nothing_is_lost(
    endpoint: Endpoint,
) -> None:
    endpoint.message_names.append(Keyed.message_name)
    handled: dict[int, list[int]] = {0: [], 1: []}
    leaving_busy = asyncio.Event()

    def handler_of(process: int) -> Callable[[Keyed, MessageAttributes], Awaitable[None]]:
        async def handle(message: Keyed, attributes: MessageAttributes) -> None:
            if process == 1:
                leaving_busy.set()
                await asyncio.sleep(0.05)  # slow: it holds prefetched messages when it stops
            handled[process].append(message.n)

        return handle

    staying = bus_on(endpoint.transport(partitions=16), handler_of(0))
    leaving = bus_on(endpoint.transport(partitions=16), handler_of(1), dispose_timeout=0.2)
    driver = driver_of(endpoint)
    async with staying, driver:
        await leaving.start()
        for n in range(200):
            await driver.send(Keyed(key=f"k-{n % 50}", n=n))
        await asyncio.wait_for(leaving_busy.wait(), 10)
        await leaving.dispose()  # what it held unacknowledged goes back to the broker

        async def all_handled() -> bool:
            return set(handled[0]) | set(handled[1]) == set(range(200))

        await eventually(all_handled, within=30)
    assert handled[1], "the leaving process had no partition"
    assert set(handled[0]) | set(handled[1]) == set(range(200))


# reconnections


async def drop_connection(transport: RabbitMQTransport) -> None:
    """Have the broker close the transport's connection, as a network failure would."""
    if os.environ.get("AMQP_URL") or shutil.which("rabbitmqctl") is None:
        pytest.skip("needs rabbitmqctl for the local broker, to close a connection")
    port = transport._sockets._socket.getsockname()[1]  # type: ignore[union-attr]
    listing = await asyncio.to_thread(rabbitmqctl, "list_connections", "-q", "pid", "peer_port")
    [pid] = [line.split()[0] for line in listing.splitlines() if line.split()[1:] == [str(port)]]
    await asyncio.to_thread(rabbitmqctl, "close_connection", pid, "busflow test")

    async def back() -> bool:
        return transport.tcp_nodelay is not None and (
            transport._sockets._socket.getsockname()[1] != port  # type: ignore[union-attr]
        )

    await eventually(back, within=20)
    await asyncio.sleep(0.5)  # the channels restored, and their callbacks run


async def test_a_process_without_partitions_that_reconnects_does_not_bind_its_queue_again(
    endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    subscription = BusSubscription(frozenset({Keyed.message_name}), prefetch=10)
    plain = endpoint.transport()
    await plain.start(subscription)
    partitioned = endpoint.transport(partitions=4)
    await partitioned.start(subscription)
    await drop_connection(plain)

    received = await arrivals(endpoint, [plain, partitioned])

    assert set(received.values()) == {1}
    assert f"queue {endpoint.name} was partitioned while this process was reconnecting" in (
        caplog.text
    )


async def test_a_partitioned_process_that_reconnects_consumes_its_partitions_again(
    endpoint: Endpoint,
) -> None:
    subscription = BusSubscription(frozenset({Keyed.message_name}), prefetch=10)
    partitioned = endpoint.transport(partitions=4)
    await partitioned.start(subscription)
    await drop_connection(partitioned)

    received = await arrivals(endpoint, [partitioned])

    assert set(received.values()) == {1}


# refusals


async def test_a_process_without_partitions_is_refused_on_a_partitioned_endpoint(
    endpoint: Endpoint,
) -> None:
    subscription = BusSubscription(frozenset({Keyed.message_name}), prefetch=1)
    partitioned = endpoint.transport(partitions=4)
    await partitioned.start(subscription)
    plain = endpoint.transport()
    with pytest.raises(RabbitMQTopologyError) as raised:
        await plain.start(subscription)
    message = str(raised.value)
    assert f"queue '{endpoint.name}' is partitioned" in message
    assert "start it with the endpoint's partitions" in message
    assert "\n" not in message


async def arrivals(endpoint: Endpoint, transports: list[RabbitMQTransport]) -> Counter[int]:
    """Send 100 keyed messages; how many times each arrived at ``transports``, started."""
    received: Counter[int] = Counter()

    async def receive(transport: RabbitMQTransport) -> None:
        while True:
            delivery = await transport.receive()
            received[json.loads(delivery.message.body)["n"]] += 1
            await transport.complete(delivery)

    receivers = [asyncio.create_task(receive(transport)) for transport in transports]
    sender = endpoint.transport(queue=f"{endpoint.name}-d")
    await sender.start(BusSubscription(frozenset(), prefetch=1))
    for n in range(100):
        await sender.send(
            TransportMessage(
                Keyed.message_name, f"m-{n}", f'{{"n":{n}}}'.encode(), partition_key=f"k-{n}"
            )
        )

    async def all_in() -> bool:
        return len(received) == 100

    await eventually(all_in, within=20)
    await asyncio.sleep(0.3)  # a copy would arrive about now
    for receiver in receivers:
        receiver.cancel()
    return received


async def test_processes_started_together_on_a_new_endpoint_all_start_and_receive_once(
    endpoint: Endpoint,
) -> None:
    subscription = BusSubscription(frozenset({Keyed.message_name}), prefetch=10)
    transports = [endpoint.transport(partitions=16) for _ in range(4)]
    await asyncio.gather(*(transport.start(subscription) for transport in transports))
    received = await arrivals(endpoint, transports)
    assert set(received.values()) == {1}


@pytest.mark.parametrize("layouts", [(16, 8), (0, 8)], ids=["16-and-8", "0-and-8"])
async def test_processes_of_two_layouts_started_together_never_both_receive_a_message(
    endpoint: Endpoint, layouts: tuple[int, int]
) -> None:
    """Two numbers of partitions: one is refused. None and some: either the partitioned
    ones are first, and the others are refused, or the others are, and the partitioned ones
    take the endpoint over (as when an endpoint is made partitioned). Never a copy."""
    subscription = BusSubscription(frozenset({Keyed.message_name}), prefetch=10)
    transports = [endpoint.transport(partitions=n) for n in layouts for _ in range(2)]
    outcomes = await asyncio.gather(
        *(transport.start(subscription) for transport in transports), return_exceptions=True
    )
    started = [t for t, outcome in zip(transports, outcomes, strict=True) if outcome is None]
    refused = [outcome for outcome in outcomes if outcome is not None]
    assert all(isinstance(each, RabbitMQTopologyError) for each in refused), refused
    if 0 not in layouts:
        assert len({t.topology.partitions for t in started}) == 1, outcomes
    received = await arrivals(endpoint, started)
    assert set(received.values()) == {1}
    endpoint.transports.extend(
        RabbitMQTransport(endpoint.url, queue=endpoint.name, partitions=n) for n in layouts
    )


@pytest.mark.parametrize("other", [2, 6])
async def test_a_process_with_another_number_of_partitions_is_refused(
    endpoint: Endpoint, other: int
) -> None:
    subscription = BusSubscription(frozenset({Keyed.message_name}), prefetch=1)
    await endpoint.transport(partitions=4).start(subscription)
    with pytest.raises(RabbitMQTopologyError, match="into another number of partitions than"):
        await endpoint.transport(partitions=other).start(subscription)


async def test_an_endpoint_made_partitioned_no_longer_takes_copies_in_its_queue(
    endpoint: Endpoint, channel: aio_pika.abc.AbstractChannel
) -> None:
    subscription = BusSubscription(frozenset({Keyed.message_name}), prefetch=1)
    plain = endpoint.transport()
    await plain.start(subscription)
    await plain.close()
    partitioned = endpoint.transport(partitions=2)
    await partitioned.start(subscription)
    await partitioned.close()
    sender = endpoint.transport()
    await sender.start(BusSubscription(frozenset(), prefetch=1))
    await sender.send(TransportMessage(Keyed.message_name, "m-1", b"{}", partition_key="k"))
    counts = [
        await message_count(channel, queue)
        for queue in (endpoint.name, f"{endpoint.name}.partition-0", f"{endpoint.name}.partition-1")
    ]
    assert sorted(counts) == [0, 0, 1]
    assert counts[0] == 0
