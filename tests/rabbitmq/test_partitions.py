"""A partitioned RabbitMQ endpoint: messages with one partition key reach one process."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable

import aio_pika
import pytest

from busflow import Bus, ConfigurationError, Message, MessageAttributes, TransportMessage
from busflow import Subscription as BusSubscription
from busflow.rabbitmq import RabbitMQTopologyError, RabbitMQTransport
from busflow.rabbitmq._topology import BUCKETS, Topology, bucket_of
from tests.rabbitmq.conftest import Endpoint, eventually, message_count


class Keyed(Message):
    message_name = "busflow-test.Keyed"
    partition_key = "key"
    key: str
    n: int


class Unkeyed(Message):
    message_name = "busflow-test.Unkeyed"
    n: int


def bus_on(
    transport: RabbitMQTransport,
    handler: Callable[[Keyed, MessageAttributes], Awaitable[None]],
) -> Bus:
    return Bus.configure().with_transport(transport).with_handler(Keyed, handler).build()


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
    assert bucket_of("order-1") == bucket_of("order-1")
    assert len({bucket_of(f"order-{n}") for n in range(2000)}) == BUCKETS


@pytest.mark.parametrize("partitions", [-1, BUCKETS + 1, 2.0, True])
def test_partitions_outside_0_to_256_are_refused(partitions: object) -> None:
    with pytest.raises(ConfigurationError, match="partitions must be"):
        RabbitMQTransport("amqp://127.0.0.1/", queue="orders", partitions=partitions)  # type: ignore[arg-type]


def test_a_partition_key_that_is_not_a_field_is_refused_when_the_class_is_made() -> None:
    with pytest.raises(ConfigurationError, match=r"Bad.partition_key is 'order'"):

        class Bad(Message):
            partition_key = "order"
            order_id: str


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
    driver = Bus.configure().with_transport(endpoint.transport(queue=f"{endpoint.name}-d")).build()
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

    def handler_of(process: int) -> Callable[[Keyed, MessageAttributes], Awaitable[None]]:
        async def handle(message: Keyed, attributes: MessageAttributes) -> None:
            handled[process].append(message.n)

        return handle

    staying = bus_on(endpoint.transport(partitions=16), handler_of(0))
    leaving = bus_on(endpoint.transport(partitions=16), handler_of(1))
    driver = Bus.configure().with_transport(endpoint.transport(queue=f"{endpoint.name}-d")).build()
    async with staying, driver:
        async with leaving:
            for n in range(100):
                await driver.send(Keyed(key=f"k-{n % 50}", n=n))

            async def first_half() -> bool:
                return len(handled[0]) + len(handled[1]) == 100

            await eventually(first_half, within=30)
        assert handled[1], "the leaving process had no partition"
        for n in range(100, 200):
            await driver.send(Keyed(key=f"k-{n % 50}", n=n))

        async def second_half() -> bool:
            return len(handled[0]) + len(handled[1]) == 200

        await eventually(second_half, within=30)
    assert sorted(handled[0] + handled[1]) == list(range(200))
    assert sorted(handled[0])[-100:] == list(range(100, 200))


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


async def test_processes_started_together_on_a_new_endpoint_all_start(
    endpoint: Endpoint,
) -> None:
    subscription = BusSubscription(frozenset({Keyed.message_name}), prefetch=1)
    transports = [endpoint.transport(partitions=16) for _ in range(4)]
    await asyncio.gather(*(transport.start(subscription) for transport in transports))
    assert all(transport.queue_type == "quorum" for transport in transports)


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
