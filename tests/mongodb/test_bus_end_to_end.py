"""Buses on MongoPersistence: racing messages, restarts and several buses on one database."""

from __future__ import annotations

import asyncio

from busflow import Bus
from busflow.mongodb import MongoPersistence
from tests.conftest import MongoBackend
from tests.scenarios import (
    ITEMS_PER_ORDER,
    CartWorkflow,
    ItemAdded,
    OrderPlaced,
    check_carts,
    run_cart_race,
)


def bus_on(backend: MongoBackend, concurrency: int = 10, *, in_order: bool = True) -> Bus:
    persistence = MongoPersistence(client=backend.client, database=backend.database)
    return (
        Bus.configure()
        .with_persistence(persistence)
        .with_workflow(CartWorkflow)
        .with_concurrency(concurrency)
        .with_per_workflow_order(in_order)
        .build()
    )


async def test_racing_messages_lose_no_update(mongo_backend: MongoBackend) -> None:
    bus = bus_on(mongo_backend, in_order=False)
    async with bus:
        result = await run_cart_race(bus, orders=100)

    assert result.lost == []
    assert result.complete == 100
    assert result.dead_letters == 0
    if mongo_backend.name == "wire":  # mongomock never yields, so nothing can race on it
        assert result.conflicts > 0, "the race was not real: no save ever conflicted"


async def test_one_bus_runs_the_race_without_conflicts(mongo_backend: MongoBackend) -> None:
    bus = bus_on(mongo_backend)
    async with bus:
        result = await run_cart_race(bus, orders=100)

    assert result.lost == []
    assert result.complete == 100
    assert result.conflicts == 0


async def test_a_new_bus_carries_on_a_workflow_from_the_database(
    mongo_backend: MongoBackend,
) -> None:
    first = bus_on(mongo_backend)
    async with first:
        await first.publish(OrderPlaced(order_id="order-0"))
        await first.wait_until_idle(timeout=10)
        for i in range(ITEMS_PER_ORDER - 1):
            await first.publish(ItemAdded(order_id="order-0", item=f"item-{i}"))
        await first.wait_until_idle(timeout=10)

    second = bus_on(mongo_backend)
    async with second:
        await second.publish(ItemAdded(order_id="order-0", item=f"item-{ITEMS_PER_ORDER - 1}"))
        await second.wait_until_idle(timeout=10)
        result = await check_carts(second.persistence, orders=1, bus=second)

    assert result.lost == []
    assert result.complete == 1
    assert second.metrics.unmatched == 0


async def test_two_buses_on_one_database_share_workflows_safely(
    mongo_backend: MongoBackend,
) -> None:
    orders = 40
    one, two = bus_on(mongo_backend, concurrency=5), bus_on(mongo_backend, concurrency=5)
    async with one, two:
        for n in range(orders):
            await one.publish(OrderPlaced(order_id=f"order-{n}"))
        await one.wait_until_idle(timeout=30)
        for n in range(orders):
            for i in range(ITEMS_PER_ORDER):
                bus = one if i % 2 == 0 else two
                await bus.publish(ItemAdded(order_id=f"order-{n}", item=f"item-{i}"))
        await asyncio.gather(one.wait_until_idle(timeout=60), two.wait_until_idle(timeout=60))
        result = await check_carts(one.persistence, orders=orders, bus=one)

    assert result.lost == []
    assert result.complete == orders
    assert one.dead_letters == two.dead_letters == []
    if mongo_backend.name == "wire":
        assert one.metrics.conflicts + two.metrics.conflicts > 0


async def test_a_document_with_a_version_busflow_never_wrote_is_dead_lettered_not_retried(
    mongo_backend: MongoBackend,
) -> None:
    carts = mongo_backend.client[mongo_backend.database]["scenario_cart"]
    await carts.insert_one(
        {"_id": "wf-edited", "_version": "3", "_status": "running", "order_id": "order-x"}
    )
    bus = bus_on(mongo_backend)
    async with bus:
        await bus.publish(ItemAdded(order_id="order-x", item="item-0"))
        await bus.wait_until_idle(timeout=10)

    [dead] = bus.dead_letters
    assert dead.error_type == "busflow.StoredStateError"
    assert "_version '3'" in dead.error_text
    assert dead.attempts == 1
    assert (bus.metrics.conflicts, bus.metrics.retries) == (0, 0)
