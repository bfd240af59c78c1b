"""The order saga through RabbitMQ, on 1, 2 and 4 worker processes, beside the memory transport.

    .venv/bin/python benchmarks/rabbitmq.py [--orders N] [--workers 1,2,4] [--partitions 0,16]
                                            [--quick] [--check]

The workload is node-ts/bus's: per order, ``OrderPlaced`` starts a workflow, then its five
``ItemAdded`` messages race each other (all orders' items are published at once), and the
save that adds the fifth item completes the workflow and publishes ``OrderCompleted``: 7
messages per order. The workers (each its own OS process, ``--worker``, bus concurrency 10)
run the workflow on ``RabbitMQTransport`` and ``MongoPersistence``; this process publishes
the orders and is a second endpoint that handles ``OrderCompleted``. Beside them, in the same
run, one process runs the same saga on ``MemoryTransport``. Every worker count runs once per
``--partitions`` value: 0 is one queue that the workers share in turn; N > 0 an endpoint of N
partitions keyed by the order id, so that one order's messages reach one worker.

For each run it reports messages/s (every delivery of the saga, from the first publish to the
last completion), MongoDB commands per message (PyMongo command monitoring in every bus,
counted up to its stop, so that each completed order's outbox clear is in),
version conflicts and retries, end-to-end latency p50 and p99 (from a message's publish to
its acknowledgement; the run publishes everything at once, so this is mostly time queued),
and whether anything was lost or duplicated: an order not complete with each of its five
items exactly once, an ``OrderCompleted`` missing or received twice, a dead letter. A
second, quiet measure sends one order at a time through one worker: the latency of the
pipeline itself.

``MONGODB_URI`` or ``--uri`` names the MongoDB (else bench.py's mongoeco wire server, started
as a subprocess); ``AMQP_URL`` or ``--amqp`` the broker (else the local RabbitMQ). Everything it
declares or creates is deleted at the end. The last line is one JSON object with every figure.
``--check`` exits 1 if anything was lost or duplicated; timing targets never fail it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import (
    CommandCounter,
    Server,
    chosen_server,
    environment,
    package_version,
    print_table,
    progress,
)
from pydantic import Field
from pymongo import AsyncMongoClient

from busflow import (
    Bus,
    Delivery,
    MemoryTransport,
    Message,
    MessageAttributes,
    MessageWorkflowMapping,
    Transport,
    Workflow,
    WorkflowMapper,
    WorkflowState,
    WorkflowStatus,
)
from busflow.mongodb import STATUS_FIELD, MongoPersistence, redact_uri
from busflow.rabbitmq import RabbitMQTransport

ITEMS = 5
MESSAGES_PER_ORDER = 1 + ITEMS + 1  # OrderPlaced, the items, OrderCompleted
CONCURRENCY = 10
PEER = {1: 43, 2: 82, 4: 128}
"""node-ts/bus-rabbitmq 1.0.5 with bus-mongodb 1.1.2, messages/s, on the same workload."""
TARGET_FACTOR = 5
COMMANDS_FACTOR = 1.2
"""Issue 14: on RabbitMQ with 2 workers, commands per message within this factor of the
memory transport's."""
SENT_AT = "sent_at"
"""The sticky attribute that carries when a message (or the one that caused it) was sent."""
WAIT_SECONDS = 600.0
QUIET_ORDERS = 30
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


# ---------------------------------------------------------------------------------------------
# The workload


class OrderPlaced(Message):
    message_name = "bench.OrderPlaced"
    partition_by = "order_id"
    order_id: str


class ItemAdded(Message):
    message_name = "bench.ItemAdded"
    partition_by = "order_id"
    order_id: str
    item: str


class OrderCompleted(Message):
    message_name = "bench.OrderCompleted"
    partition_by = "order_id"
    order_id: str


class OrderState(WorkflowState):
    workflow_name = "bench/rabbitmq-order"

    order_id: str = ""
    items: list[str] = Field(default_factory=list)


BY_ORDER: MessageWorkflowMapping[Any, OrderState] = MessageWorkflowMapping(
    lookup=lambda message, _attributes: message.order_id, maps_to="order_id"
)


class OrderWorkflow(Workflow[OrderState]):
    """Appends each item (a second delivery would show as the item twice); the fifth
    completes the order and publishes ``OrderCompleted``."""

    def configure_workflow(self, mapper: WorkflowMapper[OrderState]) -> None:
        mapper.with_state(OrderState).started_by(OrderPlaced, self.placed).when(
            ItemAdded, self.item_added, BY_ORDER
        )

    async def placed(
        self, message: OrderPlaced, state: OrderState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        return {"order_id": message.order_id}

    async def item_added(
        self, message: ItemAdded, state: OrderState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        items = [*state.items, message.item]
        if len(items) < ITEMS:
            return {"items": items}
        await self.bus.publish(OrderCompleted(order_id=state.order_id))
        return self.complete_workflow(items=items)


def stamped() -> MessageAttributes:
    """Attributes that carry the send time to the message and to what it causes."""
    return MessageAttributes(sticky_attributes={SENT_AT: time.time()})


class Latencies:
    """Seconds from each message's send to its settlement, recorded by a transport."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def record(self, delivery: Delivery) -> None:
        sent_at = delivery.message.sticky_attributes.get(SENT_AT)
        if isinstance(sent_at, float):
            self.seconds.append(time.time() - sent_at)


class TimedRabbitMQTransport(RabbitMQTransport):
    def __init__(self, latencies: Latencies, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.latencies = latencies

    async def complete(self, delivery: Delivery) -> None:
        await super().complete(delivery)
        self.latencies.record(delivery)


class TimedMemoryTransport(MemoryTransport):
    def __init__(self, latencies: Latencies) -> None:
        super().__init__()
        self.latencies = latencies

    async def complete(self, delivery: Delivery) -> None:
        await super().complete(delivery)
        self.latencies.record(delivery)


def order_bus(
    persistence: MongoPersistence,
    transport: Transport,
    *,
    completed: Callable[[OrderCompleted, MessageAttributes], Awaitable[None]] | None = None,
) -> Bus:
    persistence.with_workflow_options(OrderState, unique_running=["order_id"])  # recommended
    configuration = (
        Bus.configure()
        .with_persistence(persistence)
        .with_transport(transport)
        .with_workflow(OrderWorkflow)
        .with_concurrency(CONCURRENCY)
    )
    if completed is not None:
        configuration.with_handler(OrderCompleted, completed)
    return configuration.build()


# ---------------------------------------------------------------------------------------------
# A worker process: ``--worker``


async def serve(database: str, queue: str, partitions: int, partition_prefetch: int) -> None:
    counter = CommandCounter()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        os.environ["MONGODB_URI"], event_listeners=[counter], tz_aware=True
    )
    latencies = Latencies()
    transport = TimedRabbitMQTransport(
        latencies,
        os.environ["AMQP_URL"],
        queue=queue,
        prefix=queue,
        partitions=partitions,
        partition_prefetch=partition_prefetch,
    )
    bus = order_bus(MongoPersistence(client=client, database=database), transport)
    stop = asyncio.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signal_number, stop.set)
    try:
        async with bus:
            ready, ready_names, cpu = counter.total, counter.names.copy(), time.process_time()
            print("ready", flush=True)
            await stop.wait()
            cpu = time.process_time() - cpu
        # The bus's work, up to and including its stop, without the client's own closing
        # (endSessions), which the memory run's count does not see either.
        commands, names = counter.total - ready, counter.names - ready_names
    finally:
        await client.close()
    metrics = bus.metrics
    report = {
        "cpu_seconds": cpu,
        "messages": metrics.messages_delivered,
        "conflicts": metrics.conflicts,
        "retries": metrics.retries,
        "dead_letters": metrics.dead_letters,
        "commands": commands,
        "command_names": dict(names),
        "latencies": latencies.seconds,
    }
    print(json.dumps(report), flush=True)


# ---------------------------------------------------------------------------------------------
# The runs


@dataclass
class Run:
    transport: str
    workers: int
    partitions: int
    orders: int
    messages: int
    seconds: float
    messages_per_s: float
    commands: int
    commands_per_message: float
    command_names: dict[str, int]
    conflicts: int
    retries: int
    dead_letters: int
    latency_p50_ms: float
    latency_p99_ms: float
    cpu_us_per_message: float
    """CPU time of the processes that run the bus (the workers; for the memory transport,
    its one process) per message: what the bus costs, whatever the machine's load."""
    lost: int
    duplicated: int
    problems: list[str] = field(default_factory=list)


class Workers:
    """Worker processes (``--worker``) that share one queue and one database."""

    def __init__(
        self,
        count: int,
        *,
        amqp: str,
        mongodb: str,
        database: str,
        queue: str,
        partitions: int,
        partition_prefetch: int,
    ) -> None:
        environment = {**os.environ, "AMQP_URL": amqp, "MONGODB_URI": mongodb}
        command = [sys.executable, __file__, "--worker", "--database", database, "--queue", queue]
        command += ["--partitions", str(partitions)]
        command += ["--partition-prefetch", str(partition_prefetch)]
        self.logs: list[IO[str]] = [
            tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in kill()
            for _ in range(count)
        ]
        self.processes = [
            subprocess.Popen(
                command, env=environment, stdout=subprocess.PIPE, stderr=log, text=True
            )
            for log in self.logs
        ]

    def ready(self) -> None:
        for process, log in zip(self.processes, self.logs, strict=True):
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                process.wait()
                log.seek(0)
                raise SystemExit(f"a worker failed to start:\n{log.read()[-2000:]}")

    def kill(self) -> None:
        """Kill what still runs (after a failure), and close the logs."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.communicate()
        for log in self.logs:
            log.close()

    def stop(self) -> list[dict[str, Any]]:
        """SIGTERM: each worker finishes, then prints its report."""
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        reports = []
        for process, log in zip(self.processes, self.logs, strict=True):
            out, _ = process.communicate(timeout=60)
            log.seek(0)
            logged = log.read()
            if not out.strip():
                raise SystemExit(f"a worker ended without a report:\n{logged[-2000:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports


class Completions:
    """The ``OrderCompleted`` messages that reached this process, by order, with latencies."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.latencies = Latencies()
        self.all_in = asyncio.Event()
        self.expected = 0

    async def handle(self, message: OrderCompleted, attributes: MessageAttributes) -> None:
        self.received[message.order_id] += 1
        if len(self.received) >= self.expected:
            self.all_in.set()


async def publish_all(publishing: Iterable[Awaitable[None]], *, at_once: int = 200) -> None:
    room = asyncio.Semaphore(at_once)

    async def one(publish: Awaitable[None]) -> None:
        async with room:
            await publish

    await asyncio.gather(*(one(publish) for publish in publishing))


async def place_orders(bus: Bus, orders: Sequence[str], database: Any, started: int) -> None:
    """Every order's start, at once; once all are started, every item, at once."""
    await publish_all(bus.publish(OrderPlaced(order_id=order), stamped()) for order in orders)
    collection = database[collection_name()]
    deadline = time.monotonic() + WAIT_SECONDS
    while await collection.count_documents({}) < started + len(orders):
        if time.monotonic() > deadline:
            raise SystemExit("the orders did not start in time")
        await asyncio.sleep(0.05)
    await publish_all(
        bus.publish(ItemAdded(order_id=order, item=f"item-{i}"), stamped())
        for order in orders
        for i in range(ITEMS)
    )


def collection_name() -> str:
    return MongoPersistence("mongodb://127.0.0.1/").collection_name(OrderState)


async def check(
    database: Any, orders: Sequence[str], completions: Completions
) -> tuple[int, int, list[str]]:
    """How many orders were lost and duplicated, with examples."""
    expected = sorted(f"item-{i}" for i in range(ITEMS))
    documents = {
        document["order_id"]: document
        async for document in database[collection_name()].find({"order_id": {"$in": orders}})
    }
    lost, duplicated, problems = 0, 0, []
    for order in orders:
        document = documents.get(order)
        items = sorted(document["items"]) if document else []
        if len(items) > len(set(items)) or completions.received[order] > 1:
            duplicated += 1
            problems.append(f"{order}: items {items}, {completions.received[order]} completions")
        elif (
            document is None
            or document[STATUS_FIELD] != WorkflowStatus.COMPLETE.value
            or items != expected
            or not completions.received[order]
        ):
            lost += 1
            problems.append(f"{order}: {document and document[STATUS_FIELD]} {items}")
    return lost, duplicated, problems[:3]


def percentile_ms(seconds: Sequence[float], percentile: float) -> float:
    if not seconds:
        return float("nan")
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(len(ordered) * percentile))] * 1000


async def rabbitmq_run(
    amqp: str,
    mongodb: str,
    client: Any,
    workers: int,
    orders: int,
    *,
    partitions: int = 0,
    partition_prefetch: int = 50,
    quiet: bool = False,
) -> Run:
    """The saga through RabbitMQ on ``workers`` processes; with ``quiet``, one order at a time."""
    name = f"busflow-bench-{uuid.uuid4().hex[:8]}"
    database = client[name]
    ids = [f"order-{n}" for n in range(orders)]
    completions = Completions()
    completions.expected = orders
    driver_transport = TimedRabbitMQTransport(
        completions.latencies, amqp, queue=f"{name}-driver", prefix=name
    )
    driver = Bus.configure().with_transport(driver_transport).with_concurrency(CONCURRENCY)
    driver.with_handler(OrderCompleted, completions.handle)
    driver_bus = driver.build()
    pool = Workers(
        workers,
        amqp=amqp,
        mongodb=mongodb,
        database=name,
        queue=name,
        partitions=partitions,
        partition_prefetch=partition_prefetch,
    )
    try:
        await asyncio.to_thread(pool.ready)
        async with driver_bus:
            started = time.perf_counter()
            if quiet:
                for n, order in enumerate(ids):
                    completions.expected = n + 1
                    completions.all_in.clear()
                    await place_orders(driver_bus, [order], database, started=n)
                    await asyncio.wait_for(completions.all_in.wait(), WAIT_SECONDS)
            else:
                await place_orders(driver_bus, ids, database, started=0)
                await asyncio.wait_for(completions.all_in.wait(), WAIT_SECONDS)
            seconds = time.perf_counter() - started
            await asyncio.sleep(0.2)  # a duplicate completion would arrive about now
        reports = await asyncio.to_thread(pool.stop)
        lost, duplicated, problems = await check(database, ids, completions)
    finally:
        await asyncio.to_thread(pool.kill)
        await client.drop_database(name)
        # The driver's queue first: an exchange is deleted only once nothing is bound to it.
        await RabbitMQTransport(amqp, queue=f"{name}-driver", prefix=name).delete()
        await RabbitMQTransport(amqp, queue=name, prefix=name, partitions=partitions).delete(
            [OrderPlaced.message_name, ItemAdded.message_name, OrderCompleted.message_name]
        )
    messages = sum(report["messages"] for report in reports) + driver_bus.metrics.messages_delivered
    commands = sum(report["commands"] for report in reports)
    latencies = [
        *completions.latencies.seconds,
        *(latency for report in reports for latency in report["latencies"]),
    ]
    names: Counter[str] = Counter()
    for report in reports:
        names.update(report["command_names"])
    return Run(
        transport="rabbitmq",
        workers=workers,
        partitions=partitions,
        orders=orders,
        messages=messages,
        seconds=seconds,
        messages_per_s=messages / seconds,
        commands=commands,
        commands_per_message=commands / messages,
        command_names=dict(names),
        conflicts=sum(report["conflicts"] for report in reports),
        retries=sum(report["retries"] for report in reports),
        dead_letters=sum(report["dead_letters"] for report in reports),
        latency_p50_ms=percentile_ms(latencies, 0.50),
        latency_p99_ms=percentile_ms(latencies, 0.99),
        cpu_us_per_message=sum(report["cpu_seconds"] for report in reports) / messages * 1e6,
        lost=lost,
        duplicated=duplicated,
        problems=problems,
    )


async def memory_run(mongodb: str, orders: int) -> Run:
    """The same saga in one process, on ``MemoryTransport``, on the same MongoDB."""
    name = f"busflow-bench-{uuid.uuid4().hex[:8]}"
    counter = CommandCounter()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongodb, event_listeners=[counter], tz_aware=True
    )
    latencies = Latencies()
    completions = Completions()
    completions.expected = orders
    ids = [f"order-{n}" for n in range(orders)]
    bus = order_bus(
        MongoPersistence(client=client, database=name),
        TimedMemoryTransport(latencies),
        completed=completions.handle,
    )
    watcher: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb)  # not counted
    try:
        async with bus:
            ready, ready_names = counter.total, counter.names.copy()
            started, cpu = time.perf_counter(), time.process_time()
            await place_orders(bus, ids, watcher[name], started=0)
            await asyncio.wait_for(completions.all_in.wait(), WAIT_SECONDS)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            await bus.wait_until_idle(timeout=WAIT_SECONDS)
        # Counted once the bus has stopped, as in the workers: the outbox of each completed
        # order is cleared half a second after its OrderCompleted left, or at the stop.
        commands, names = counter.total - ready, counter.names - ready_names
        lost, duplicated, problems = await check(client[name], ids, completions)
    finally:
        await client.drop_database(name)
        await client.close()
        await watcher.close()
    metrics = bus.metrics
    return Run(
        transport="memory",
        workers=1,
        partitions=0,
        orders=orders,
        messages=metrics.messages_delivered,
        seconds=seconds,
        messages_per_s=metrics.messages_delivered / seconds,
        commands=commands,
        commands_per_message=commands / metrics.messages_delivered,
        command_names=dict(names),
        conflicts=metrics.conflicts,
        retries=metrics.retries,
        dead_letters=len(bus.dead_letters),
        latency_p50_ms=percentile_ms(latencies.seconds, 0.50),
        latency_p99_ms=percentile_ms(latencies.seconds, 0.99),
        cpu_us_per_message=cpu / metrics.messages_delivered * 1e6,
        lost=lost,
        duplicated=duplicated,
        problems=problems,
    )


# ---------------------------------------------------------------------------------------------
# The report


async def rabbitmq_version(amqp: str) -> str:
    import aio_pika

    connection = await aio_pika.connect(amqp, timeout=10)
    try:
        assert connection.transport is not None
        version = connection.transport.connection.server_properties.get("version", b"?")
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        await connection.close()


async def measure(
    server: Server,
    amqp: str,
    orders: int,
    worker_counts: Sequence[int],
    partition_counts: Sequence[int],
    partition_prefetch: int,
) -> dict[str, Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.uri, tz_aware=True)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = [round(load, 2) for load in os.getloadavg()]
    began = time.perf_counter()
    try:
        broker = f"RabbitMQ {await rabbitmq_version(amqp)} at {redact_uri(amqp)}"
        runs: list[Run] = []
        progress(f"memory transport, {orders} orders")
        runs.append(await memory_run(server.uri, orders))
        for workers in worker_counts:
            for partitions in partition_counts:
                progress(
                    f"RabbitMQ, {workers} worker process(es), {partitions} partitions, "
                    f"{orders} orders"
                )
                runs.append(
                    await rabbitmq_run(
                        amqp,
                        server.uri,
                        client,
                        workers,
                        orders,
                        partitions=partitions,
                        partition_prefetch=partition_prefetch,
                    )
                )
        progress(f"RabbitMQ, one order at a time, {QUIET_ORDERS} orders, 1 worker")
        quiet = await rabbitmq_run(amqp, server.uri, client, 1, QUIET_ORDERS, quiet=True)
    finally:
        await client.close()
    env = environment({"label": server.label, "uri": redact_uri(server.uri)})
    env["broker"] = broker
    env["load_average_before"] = load_before
    env["load_average_after"] = [round(load, 2) for load in os.getloadavg()]
    env["aio_pika"] = package_version("aio-pika")
    return {
        "benchmark": "busflow-rabbitmq",
        "started_at": started_at,
        "elapsed_s": round(time.perf_counter() - began, 1),
        "environment": env,
        "orders": orders,
        "concurrency_per_worker": CONCURRENCY,
        "runs": [asdict(run) for run in runs],
        "quiet": asdict(quiet),
        "peer_messages_per_s": PEER,
        "target_factor": TARGET_FACTOR,
        "commands_factor": COMMANDS_FACTOR,
        "partition_prefetch": partition_prefetch,
    }


def print_report(report: dict[str, Any]) -> None:
    env = report["environment"]
    machine = env["machine"]
    print(
        f"busflow order saga on RabbitMQ: {report['orders']} orders x {MESSAGES_PER_ORDER} "
        f"messages, bus concurrency {report['concurrency_per_worker']} per process"
    )
    print(f"  broker:   {env['broker']} (aio-pika {env['aio_pika']})")
    print(f"  database: {env['server']['label']} ({env['driver']})")
    print(
        f"  machine:  {machine['cpu_count']} CPU(s), {machine['cpu_model']}, "
        f"{machine['platform']}, {env['python']}; load average "
        f"{env['load_average_before'][0]} before, {env['load_average_after'][0]} after"
    )
    rows = []
    for run in report["runs"]:
        peer = PEER.get(run["workers"]) if run["transport"] == "rabbitmq" else None
        target = f"{peer * TARGET_FACTOR}" if peer else ""
        rows.append(
            [
                run["transport"],
                run["workers"],
                run["partitions"],
                f"{run['messages_per_s']:.0f}",
                target,
                f"{peer}" if peer else "",
                f"{run['commands_per_message']:.3f}",
                run["conflicts"],
                run["retries"],
                f"{run['latency_p50_ms']:.0f}",
                f"{run['latency_p99_ms']:.0f}",
                f"{run['cpu_us_per_message']:.0f}",
                run["lost"],
                run["duplicated"],
                run["dead_letters"],
            ]
        )
    print_table(
        "throughput (everything published at once; latency is mostly time queued)",
        [
            "transport",
            "processes",
            "partitions",
            "msg/s",
            "target",
            "node-ts",
            "cmds/msg",
            "conflicts",
            "retries",
            "p50 ms",
            "p99 ms",
            "bus CPU µs/msg",
            "lost",
            "duplicated",
            "dead letters",
        ],
        rows,
    )
    memory = next(run for run in report["runs"] if run["transport"] == "memory")
    for run in report["runs"]:
        if run["transport"] == "rabbitmq" and run["workers"] == 2:
            ratio = run["commands_per_message"] / memory["commands_per_message"]
            verdict = "met" if ratio <= COMMANDS_FACTOR else "not met"
            print(
                f"RabbitMQ, 2 workers, {run['partitions']} partitions: "
                f"{run['commands_per_message']:.3f} commands/msg, {ratio:.2f}x the memory "
                f"transport's {memory['commands_per_message']:.3f} (target <= "
                f"{COMMANDS_FACTOR}x: {verdict})"
            )
    quiet = report["quiet"]
    print(
        f"\none order at a time through RabbitMQ and 1 worker ({quiet['orders']} orders): "
        f"latency p50 {quiet['latency_p50_ms']:.1f} ms, p99 {quiet['latency_p99_ms']:.1f} ms "
        f"per message, {quiet['commands_per_message']:.3f} commands per message"
    )
    for run in [*report["runs"], quiet]:
        for problem in run["problems"]:
            print(f"  ! {run['transport']} x{run['workers']}: {problem}")


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/rabbitmq.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--uri", help="MongoDB connection string (default: $MONGODB_URI)")
    parser.add_argument(
        "--amqp", help=f"RabbitMQ URL (default: $AMQP_URL, else {DEFAULT_AMQP_URL})"
    )
    parser.add_argument("--orders", type=int, default=200, help="orders per run (default 200)")
    parser.add_argument(
        "--workers",
        default="1,2,4",
        help="worker process counts, comma-separated (default 1,2,4)",
    )
    parser.add_argument(
        "--partitions",
        default="0,16",
        help="partition counts to run each worker count with, comma-separated (default 0,16)",
    )
    parser.add_argument(
        "--partition-prefetch",
        type=int,
        default=50,
        help="RabbitMQTransport's partition_prefetch (default 50)",
    )
    parser.add_argument("--quick", action="store_true", help="50 orders, 1 and 2 workers")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if anything was lost or duplicated"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if arguments.worker:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        asyncio.run(
            serve(
                arguments.database,
                arguments.queue,
                int(arguments.partitions),
                arguments.partition_prefetch,
            )
        )
        return 0
    orders = 50 if arguments.quick else arguments.orders
    worker_counts = [1, 2] if arguments.quick else [int(n) for n in arguments.workers.split(",")]
    amqp = arguments.amqp or os.environ.get("AMQP_URL") or DEFAULT_AMQP_URL
    logging.getLogger("busflow").setLevel(logging.CRITICAL)
    with chosen_server(arguments.uri or os.environ.get("MONGODB_URI")) as server:
        partition_counts = [int(n) for n in arguments.partitions.split(",")]
        report = asyncio.run(
            measure(
                server, amqp, orders, worker_counts, partition_counts, arguments.partition_prefetch
            )
        )
    print_report(report)
    print(f"\nelapsed: {report['elapsed_s']} s")
    print(json.dumps(report, default=str, separators=(",", ":")))
    runs = [*report["runs"], report["quiet"]]
    failed = any(run["lost"] or run["duplicated"] or run["dead_letters"] for run in runs)
    return 1 if arguments.check and failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
