"""Several worker processes on one queue and one database: each a real OS process with its
own bus on RabbitMQ and MongoPersistence on the wire-tier server."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from tests.conftest import RabbitMQServer, WireServer
from tests.rabbitmq.conftest import rabbitmqctl
from tests.rabbitmq.harness import Cluster, Worker
from tests.rabbitmq.saga import ItemAdded

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
async def cluster(rabbitmq: RabbitMQServer, wire_server: WireServer) -> AsyncIterator[Cluster]:
    made = Cluster(rabbitmq.url, wire_server.uri, f"busflow-test-{uuid.uuid4().hex[:8]}")
    try:
        yield made
    finally:
        await made.tear_down()


async def test_three_workers_complete_every_order_with_exactly_its_items(
    cluster: Cluster,
) -> None:
    workers = await cluster.start_workers(3)
    await cluster.place_orders(200, items=5)
    await cluster.until_complete(200, within=180)
    outcome = await cluster.outcome()
    await cluster.stop_workers()
    assert sum(worker.conflicts for worker in workers) > 0, "the workers never raced"
    assert outcome.wrong_orders(items=5) == []
    assert len(outcome.orders) == 200
    assert outcome.completions == {f"order-{n}": 1 for n in range(200)}
    assert outcome.dead_letters == []


async def test_partitioned_workers_complete_every_order_with_exactly_its_items(
    cluster: Cluster,
) -> None:
    cluster.partitions = 8
    await cluster.start_workers(2)
    await cluster.place_orders(200, items=5)
    await cluster.until_complete(200, within=180)
    outcome = await cluster.outcome()
    assert outcome.wrong_orders(items=5) == []
    assert outcome.completions == {f"order-{n}": 1 for n in range(200)}
    assert outcome.duplicate_effects == {}
    assert outcome.dead_letters == []


async def test_a_worker_killed_mid_run_loses_nothing_once_another_takes_its_place(
    cluster: Cluster,
) -> None:
    doomed, *_ = await cluster.start_workers(3)
    placing = asyncio.create_task(cluster.place_orders(200, items=5))
    await cluster.until_complete(20, within=120)
    doomed.process.send_signal(signal.SIGKILL)
    assert await doomed.ended(within=10) == -signal.SIGKILL
    await cluster.start_worker()
    await placing
    await cluster.until_complete(200, within=180)
    outcome = await cluster.outcome()
    assert outcome.wrong_orders(items=5) == []
    assert len(outcome.orders) == 200
    assert outcome.dead_letters == []


async def test_four_workers_on_two_hot_workflows_dead_letter_nothing_for_conflicts(
    cluster: Cluster,
) -> None:
    workers = await cluster.start_workers(4, "--max-attempts", "2")
    await cluster.place_orders(2, items=150)
    await cluster.until_complete(2, within=180)
    outcome = await cluster.outcome()
    await cluster.stop_workers()
    assert sum(worker.conflicts for worker in workers) > 0, "the workers never raced"
    assert outcome.wrong_orders(items=150) == []
    assert outcome.dead_letters == []


async def test_a_poison_message_is_dead_lettered_and_the_workers_carry_on(
    cluster: Cluster,
) -> None:
    await cluster.start_workers(2)
    async with cluster.channel() as channel:
        exchange = await channel.get_exchange(f"{cluster.name}.{ItemAdded.message_name}")
        await exchange.publish(
            aio_pika.Message(b"{not json", type=ItemAdded.message_name, message_id="poison"),
            routing_key="",
        )
    await cluster.place_orders(20, items=5)
    await cluster.until_complete(20, within=60)
    outcome = await cluster.outcome()
    assert outcome.wrong_orders(items=5) == []
    [dead] = outcome.dead_letters
    assert dead.message.message_id == "poison"
    assert dead.error_type == "busflow.MessageDecodeError"
    assert dead.attempts == 1


@pytest.mark.broker_restart
@pytest.mark.parametrize("partitions", [0, 8])
async def test_workers_reconnect_after_a_broker_restart_and_nothing_is_lost(
    cluster: Cluster, partitions: int
) -> None:
    cluster.partitions = partitions
    workers = await cluster.start_workers(2)
    placing = asyncio.create_task(cluster.place_orders(100, items=5))
    await cluster.until_complete(10, within=120)
    try:
        await asyncio.to_thread(rabbitmqctl, "stop_app")
        await asyncio.sleep(2)
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")
        await asyncio.to_thread(rabbitmqctl, "await_startup")
    await placing
    await cluster.until_complete(100, within=180)
    outcome = await cluster.outcome()
    assert [worker.process.poll() for worker in workers] == [None, None]
    assert outcome.wrong_orders(items=5) == []
    assert len(outcome.orders) == 100
    assert outcome.dead_letters == []


# Issue 9's kill points: 0 duplicate effects and 0 lost outgoing messages when a worker is
# killed between save and dispatch, between dispatch and acknowledgement, or in a handler.


@pytest.mark.parametrize(
    ("point", "after", "partitions"),
    [
        ("save-then-dispatch", 3, 0),
        ("dispatch-then-ack", 10, 0),
        ("during-handler", 10, 0),
        ("save-then-dispatch", 3, 8),
        ("dispatch-then-ack", 10, 8),
    ],
)
async def test_a_worker_killed_at_a_kill_point_leaves_no_duplicate_effect_nor_lost_message(
    cluster: Cluster, point: str, after: int, partitions: int
) -> None:
    cluster.partitions = partitions
    # The doomed worker handles one message at a time, so that it dies with that message
    # exactly at the point, and no other message of its own half done.
    doomed = await cluster.start_worker(
        "--concurrency", "1", "--kill-at", point, "--kill-after", str(after)
    )
    await cluster.start_worker()
    placed = await place_until_killed(cluster, doomed)
    assert await doomed.ended(within=120) == -signal.SIGKILL
    assert f"killed at {point}" in doomed.lines
    await cluster.start_worker()
    await cluster.until_complete(placed, within=120)
    outcome = await cluster.outcome()
    assert outcome.wrong_orders(items=5) == []
    assert outcome.dead_letters == []
    assert outcome.duplicate_effects == {}
    assert outcome.lost_completions == []


async def place_until_killed(cluster: Cluster, doomed: Worker, *, waves: int = 4) -> int:
    """Place 60 orders at a time until the doomed worker has died at its kill point; return
    how many orders were placed.

    Three items of every order first, the last two only once those are in: the kill comes
    while orders are running (or, at save-then-dispatch, as one completes), and what the
    dead worker left unacknowledged is handled again before its order can complete. On a
    loaded machine the other worker may take so large a share that the doomed one reaches
    its point less often than asked within one wave: then another wave follows.
    """
    died = asyncio.create_task(doomed.ended(within=300))
    try:
        for wave in range(waves):
            placing = asyncio.create_task(
                cluster.place_orders(60, items=5, first_wave=3, first=60 * wave)
            )
            await asyncio.wait({placing, died}, return_when=asyncio.FIRST_COMPLETED)
            await placing
            if not died.done():
                await cluster.until_complete(60 * (wave + 1), within=120)
                # The doomed worker's last message may have been its point.
                await asyncio.wait({died}, timeout=0.5)
            if died.done():
                return 60 * (wave + 1)
    finally:
        died.cancel()
    raise AssertionError(f"the doomed worker never reached its kill point in {waves} waves")
