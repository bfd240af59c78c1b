"""An order saga on MongoDB, run end to end: ``busflow demo`` or ``python examples/order_saga.py``.

Read it as an example of busflow. An order workflow is started by ``OrderPlaced``. Items
arrive as ``ItemAdded`` messages, spread over two instances of the order service (two buses on
one database, as two processes would be), so their saves race: MongoDB's version check turns
away the loser, which is retried on fresh state, and no item is lost. ``PaymentReceived`` makes
the workflow send ``ShipOrder`` to a warehouse (a plain handler), whose ``OrderShipped`` reply
finds its way back by the sticky ``workflow_id`` and completes the workflow. A second order is
left running.

The demo then prints what happened, the stored documents as relaxed Extended JSON, and the
mongo shell commands that show them.

Where it runs: ``--uri`` or ``MONGODB_URI`` if given; otherwise an embedded, in-process
server (mongoeco's wire server, ``busflow.mongodb.embedded``), or mongomock-motor if mongoeco
is not installed. Each run uses order ids of its own, so running it twice against the same
server leaves the first run's orders in place.

With ``--amqp URL`` (or ``AMQP_URL``) the two instances of the order service are two worker
processes (``busflow.cli._demo_worker``) that share the database and one queue on RabbitMQ;
this process places the orders, and follows them in the database. The queue stays, empty,
for ``busflow dead-letters list --queue busflow-demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import IO, Any

from bson import json_util
from pydantic import Field
from pymongo.errors import PyMongoError

from busflow import (
    Bus,
    BusflowError,
    DeadLetter,
    Message,
    MessageAttributes,
    MessageWorkflowMapping,
    Persistence,
    RetryPolicy,
    Transport,
    Workflow,
    WorkflowMapper,
    WorkflowState,
    WorkflowStatus,
)
from busflow.cli._common import RELAXED_JSON, CommandParser, add_demo_arguments
from busflow.cli._dead_letters import quiet_driver_logs
from busflow.mongodb import (
    EmbeddedServer,
    MongoPersistence,
    embedded_server_available,
    mask_password,
    redact_uri,
)

__all__ = [
    "ItemAdded",
    "OrderPlaced",
    "OrderShipped",
    "OrderState",
    "OrderWorkflow",
    "PaymentReceived",
    "ShipOrder",
    "build_bus",
    "main",
    "run",
]


# The messages


class OrderPlaced(Message):
    order_id: str
    customer: str
    expected_items: int


class ItemAdded(Message):
    order_id: str
    item: str


class PaymentReceived(Message):
    order_id: str
    amount: Decimal


class ShipOrder(Message):
    """A command to the warehouse; sent by the workflow, so it carries its ``workflow_id``."""

    order_id: str


class OrderShipped(Message):
    """The warehouse's reply; it reaches the workflow by the sticky ``workflow_id``."""

    order_id: str


# The workflow


class OrderState(WorkflowState):
    workflow_name = "demo/order"  # stored in the collection demo_order

    order_id: str = ""
    customer: str = ""
    expected_items: int = 0
    items: list[str] = Field(default_factory=list)
    amount_paid: Decimal | None = None
    shipped: bool = False


BY_ORDER_ID: MessageWorkflowMapping[Any, OrderState] = MessageWorkflowMapping(
    lookup=lambda message, _attributes: message.order_id, maps_to="order_id"
)


class OrderWorkflow(Workflow[OrderState]):
    """Placed, filled with items, paid, shipped: then complete."""

    def configure_workflow(self, mapper: WorkflowMapper[OrderState]) -> None:
        (
            mapper.with_state(OrderState)
            .started_by(OrderPlaced, self.placed)
            .when(ItemAdded, self.item_added, BY_ORDER_ID)
            .when(PaymentReceived, self.payment_received, BY_ORDER_ID)
            .when(OrderShipped, self.shipped)  # no mapping: by the sticky workflow_id
        )

    async def placed(
        self, message: OrderPlaced, state: OrderState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        return {
            "order_id": message.order_id,
            "customer": message.customer,
            "expected_items": message.expected_items,
        }

    async def item_added(
        self, message: ItemAdded, state: OrderState, attributes: MessageAttributes
    ) -> dict[str, Any] | None:
        if message.item in state.items:
            return None  # delivered twice: nothing changes
        # Items race each other: if another item was saved since this state was read, the
        # save fails with a version conflict and the bus runs this again on fresh state.
        return {"items": [*state.items, message.item]}

    async def payment_received(
        self, message: PaymentReceived, state: OrderState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        await self.bus.send(ShipOrder(order_id=state.order_id))  # leaves once this is saved
        return {"amount_paid": message.amount}

    async def shipped(
        self, message: OrderShipped, state: OrderState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        return self.complete_workflow(shipped=True)


def build_bus(persistence: MongoPersistence, transport: Transport | None = None) -> Bus:
    """One instance of the order service: the workflow, and a warehouse that ships.

    On ``transport`` if given (a ``RabbitMQTransport`` in the worker processes), else on a
    ``MemoryTransport`` of its own.
    """

    async def warehouse(message: ShipOrder, attributes: MessageAttributes) -> None:
        # A plain handler; what it publishes carries the sticky workflow_id of ShipOrder.
        await bus.publish(OrderShipped(order_id=message.order_id))

    persistence.with_workflow_options(OrderState, unique_running=["order_id"])
    configuration = Bus.configure()
    if transport is not None:
        configuration.with_transport(transport)
    bus = (
        configuration.with_persistence(persistence)
        .with_workflow(OrderWorkflow)
        .with_handler(ShipOrder, warehouse)
        .with_concurrency(4)
        .with_retry_policy(RetryPolicy(max_attempts=10, base_delay=0.002, max_delay=0.05))
        .build()
    )
    return bus


# Running it


@dataclass(frozen=True)
class DemoOrder:
    order_id: str
    customer: str
    items: tuple[str, ...]
    items_to_add: int
    """How many of ``items`` the demo sends; fewer than all leaves the order waiting."""
    amount: Decimal | None
    """What the customer pays; ``None`` leaves the order unpaid, so its workflow runs on."""


def demo_orders(run_tag: str) -> tuple[DemoOrder, ...]:
    """This run's two orders: one to fill, pay and ship; one left waiting for items."""
    return (
        DemoOrder(
            f"order-{run_tag}-1",
            "ada",
            ("keyboard", "mouse", "monitor", "cable"),
            items_to_add=4,
            amount=Decimal("249.90"),
        ),
        DemoOrder(
            f"order-{run_tag}-2",
            "grace",
            ("notebook", "pen", "ink"),
            items_to_add=1,
            amount=None,
        ),
    )


def placed(order: DemoOrder) -> OrderPlaced:
    return OrderPlaced(
        order_id=order.order_id, customer=order.customer, expected_items=len(order.items)
    )


def report_placed(orders: Sequence[DemoOrder]) -> None:
    for order in orders:
        print(f"  {order.order_id} placed by {order.customer}, {len(order.items)} items to come")


def report_paid(orders: Sequence[DemoOrder]) -> None:
    for order in orders:
        if order.amount is not None:
            print(
                f"  {order.order_id} paid {order.amount}; the workflow sent ShipOrder, and the "
                "warehouse's OrderShipped reply found it by its sticky workflow_id"
            )


def report_outcome(states: Sequence[OrderState], dead_letters: Sequence[DeadLetter]) -> None:
    for state in states:
        print(f"  {state.order_id} is {describe(state)}")
    for dead_letter in dead_letters:
        error = f"{dead_letter.error_type}: {dead_letter.error_text}"
        print(f"  failed for good: {dead_letter.handler}: {error}")


async def run_orders(services: Sequence[Bus], run_tag: str) -> list[OrderState]:
    """Run the saga for this run's two orders; print what happened; return their states.

    ``services`` are instances of the order service that share one database, as separate
    processes would: messages for one order reach all of them, so their saves race.
    """
    orders = demo_orders(run_tag)

    async def wait_until_idle() -> None:
        for service in services:
            await service.wait_until_idle(timeout=30)

    for order in orders:
        await services[0].publish(placed(order))
    await wait_until_idle()
    report_placed(orders)

    sent = 0
    for order in orders:
        for item in order.items[: order.items_to_add]:
            await services[sent % len(services)].publish(
                ItemAdded(order_id=order.order_id, item=item)
            )
            sent += 1
    await wait_until_idle()
    conflicts = sum(service.metrics.conflicts for service in services)
    print(
        f"  {sent} ItemAdded messages spread over {len(services)} instances of the order "
        f"service at once: {conflicts} save(s) lost a race and were retried on fresh state"
    )

    for order in orders:
        if order.amount is not None:
            await services[-1].publish(
                PaymentReceived(order_id=order.order_id, amount=order.amount)
            )
    await wait_until_idle()
    report_paid(orders)

    states = [await read_order(services[0].persistence, order.order_id) for order in orders]
    report_outcome(states, [letter for service in services for letter in service.dead_letters])
    return states


async def read_order(persistence: Persistence, order_id: str) -> OrderState:
    """An order's state, running or complete, as the workflow sees it."""
    state = await find_order(persistence, order_id)
    if state is None:
        raise DemoError(f"{order_id} is not in the database")
    return state


async def find_order(persistence: Persistence, order_id: str) -> OrderState | None:
    """An order's state, running or complete; ``None`` before it was placed."""
    found = await persistence.get_workflow_state(
        OrderState,
        BY_ORDER_ID,
        ItemAdded(order_id=order_id, item=""),
        MessageAttributes(),
        include_completed=True,
    )
    return found[0] if found else None


def describe(state: OrderState) -> str:
    paid = f"paid {state.amount_paid}" if state.amount_paid is not None else "not paid"
    shipped = "shipped" if state.shipped else "not shipped"
    return (
        f"{state.workflow_status.value}: {len(state.items)} of {state.expected_items} items, "
        f"{paid}, {shipped} (version {state.workflow_version})"
    )


async def stored_documents(
    persistence: MongoPersistence, states: Sequence[OrderState]
) -> list[dict[str, Any]]:
    """The documents that hold ``states``, read straight from their collection."""
    collection = persistence.database[persistence.collection_name(OrderState)]
    ids = [state.workflow_id for state in states]
    by_id = {document["_id"]: document async for document in collection.find({"_id": {"$in": ids}})}
    return [by_id[workflow_id] for workflow_id in ids]


def shell_commands(collection: str, database: str, states: Sequence[OrderState]) -> list[str]:
    """The mongosh commands that show this run's documents."""
    order_ids = ", ".join(f'"{state.order_id}"' for state in states)
    return [
        f"use {database}",
        f"db.{collection}.find({{order_id: {{$in: [{order_ids}]}}}})",
        f'db.{collection}.find({{_status: "running"}}).sort({{_updated_at: 1}})',
        f"db.{collection}.getIndexes()",
        f'db.busflow_workflows.find({{_id: "{collection}"}})',
    ]


# Choosing the server


SERVICE_INSTANCES = 2
"""How many instances of the order service the demo runs on the one database."""


@dataclass(frozen=True)
class Backend:
    """Where the demo keeps its workflows."""

    new_persistence: Callable[[], MongoPersistence]
    """A persistence for one service instance; each instance gets its own."""
    description: str
    uri: str | None
    """The server's connection string, if it outlives the demo (so the commands work)."""
    shared_uri: str | None
    """A connection string that other processes can use while the demo runs, if any."""


class BackendUnavailableError(Exception):
    """No server was given and no embedded one can run here."""


class DemoError(Exception):
    """The demo could not go on; the message says why, in one line."""


@contextlib.contextmanager
def choose_backend(
    uri: str | None, uri_source: str, database: str, timeout: float
) -> Iterator[Backend]:
    """The server given, else an embedded one: mongoeco's wire server, else mongomock."""
    if uri:
        given = uri
        yield Backend(
            lambda: MongoPersistence(given, database=database, connect_timeout=timeout),
            f"MongoDB at {redact_uri(uri)} (from {uri_source})",
            uri,
            uri,
        )
        return
    if embedded_server_available():
        with EmbeddedServer() as server:
            yield Backend(
                lambda: MongoPersistence(server.uri, database=database, connect_timeout=timeout),
                f"an embedded mongoeco wire server at {server.uri} (no --uri or MONGODB_URI "
                "given; it runs inside this process and its data is gone when the demo ends)",
                None,
                server.uri,
            )
        return
    try:
        from mongomock_motor import AsyncMongoMockClient
    except ImportError:
        raise BackendUnavailableError(
            "no --uri or MONGODB_URI given, and no embedded server to fall back to: "
            'pip install "mongoeco[wire]" (CPython 3.13+) or mongomock-motor, '
            "or pass --uri mongodb://HOST/"
        ) from None
    client: Any = AsyncMongoMockClient()
    yield Backend(
        lambda: MongoPersistence(client=client, database=database),
        "mongomock-motor, in process (no --uri or MONGODB_URI given and mongoeco is not "
        "installed; its data is gone when the demo ends)",
        None,
        None,
    )


async def run_demo(backend: Backend, database: str) -> None:
    """Run the saga on ``backend`` and print the whole report."""
    persistences = [backend.new_persistence() for _ in range(SERVICE_INSTANCES)]
    collection = persistences[0].collection_name(OrderState)
    run_tag = uuid.uuid4().hex[:6]
    try:
        await persistences[0].initialize()  # fails fast, naming the host, if it is away
        print_start(database, collection, run_tag)
        async with contextlib.AsyncExitStack() as running:
            services = [
                await running.enter_async_context(build_bus(persistence))
                for persistence in persistences
            ]
            states = await run_orders(services, run_tag)
            documents = await stored_documents(persistences[0], states)
    finally:
        for persistence in persistences:
            await persistence.dispose()
    print_report(backend, database, collection, states, documents)


def print_start(database: str, collection: str, run_tag: str) -> None:
    print(
        f"database {database}, collection {collection}; this run's order ids carry the "
        f"tag {run_tag}, so orders of earlier runs are left as they are"
    )
    print()
    print("What happened:")


def print_report(
    backend: Backend,
    database: str,
    collection: str,
    states: Sequence[OrderState],
    documents: Sequence[dict[str, Any]],
    more_commands: Sequence[str] = (),
) -> None:
    """The stored documents, and the commands that show them."""
    print()
    print(f"The stored documents (db.{collection}, relaxed Extended JSON):")
    for document in documents:
        print(json_util.dumps(document, json_options=RELAXED_JSON, indent=2))

    print()
    if backend.uri is None:
        print("The mongo shell commands that show them (on a server of your own, with --uri):")
    else:
        print(f'The mongo shell commands that show them (mongosh "{redact_uri(backend.uri)}"):')
    for command in shell_commands(collection, database, states):
        print(f"  {command}")
    operator_commands = list(more_commands)
    if backend.uri is not None:
        uri = redact_uri(backend.uri)
        operator_commands[:0] = [
            f'busflow inspect --uri "{uri}" --database {database}',
            f'busflow show --uri "{uri}" --database {database} {collection} --status running',
        ]
    if operator_commands:
        print()
        print("Or with busflow's operator commands:")
        for command in operator_commands:
            print(f"  {command}")


# On RabbitMQ: two worker processes


WAIT_SECONDS = 30.0
"""How long the demo waits for the workers to get each step done."""


class Workers:
    """The order service as worker processes (``python -m busflow.cli._demo_worker``).

    They get the connection strings in their environment, never on their command line, where
    ``ps`` would show a password.
    """

    def __init__(self, count: int, *, amqp: str, uri: str, database: str, queue: str) -> None:
        environment = {**os.environ, "AMQP_URL": amqp, "MONGODB_URI": uri}
        command = [
            sys.executable,
            *("-m", "busflow.cli._demo_worker"),
            *("--database", database, "--queue", queue),
        ]
        self._logs: list[IO[str]] = []
        self.processes: list[subprocess.Popen[str]] = []
        for _ in range(count):
            log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in stop()
            self._logs.append(log)
            self.processes.append(
                subprocess.Popen(  # noqa: S603 - this interpreter, busflow's own module
                    command, env=environment, stdout=subprocess.PIPE, stderr=log, text=True
                )
            )

    async def ready(self) -> None:
        """Wait until every worker says it is ready."""
        for number, process in enumerate(self.processes, 1):
            assert process.stdout is not None
            try:
                async with asyncio.timeout(WAIT_SECONDS):
                    line = await asyncio.to_thread(process.stdout.readline)
            except TimeoutError:
                raise DemoError(
                    f"worker {number} did not start within {WAIT_SECONDS:g} s"
                ) from None
            if line.strip() != "ready":
                process.wait()
                raise DemoError(f"worker {number} failed to start: {self._last_words(number)}")

    def check(self) -> None:
        """Raise if a worker has ended."""
        for number, process in enumerate(self.processes, 1):
            if process.poll() is not None:
                raise DemoError(
                    f"worker {number} ended (exit status {process.returncode}): "
                    f"{self._last_words(number)}"
                )

    def stop(self) -> list[str]:
        """Stop every worker (SIGTERM: each finishes what it holds); what each says at the end."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        said: list[str] = []
        for process in self.processes:
            try:
                out, _ = process.communicate(timeout=WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                out, _ = process.communicate()
            said.append(out.strip())
        for log in self._logs:
            log.close()
        return said

    def _last_words(self, number: int) -> str:
        log = self._logs[number - 1]
        log.seek(0)
        lines = [line.strip() for line in log.read().splitlines() if line.strip()]
        return lines[-1] if lines else "it wrote nothing"


async def until(check: Callable[[], Awaitable[bool]], what: str, workers: Workers) -> None:
    """Wait until ``check()`` holds: the workers do the work, this process watches."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while not await check():
        workers.check()
        if loop.time() > deadline:
            raise DemoError(f"{what} did not happen within {WAIT_SECONDS:g} s")
        await asyncio.sleep(0.05)


async def run_orders_on_workers(
    sender: Bus, persistence: MongoPersistence, run_tag: str, workers: Workers
) -> list[OrderState]:
    """The same saga as ``run_orders``, sent through RabbitMQ to the worker processes; this
    process follows each step in the database."""
    orders = demo_orders(run_tag)

    async def states_are(condition: Callable[[OrderState], bool]) -> bool:
        states = [await find_order(persistence, order.order_id) for order in orders]
        return all(state is not None and condition(state) for state in states)

    for order in orders:
        await sender.publish(placed(order))
    await until(lambda: states_are(lambda _: True), "placing the orders", workers)
    report_placed(orders)

    sent = 0
    for order in orders:
        for item in order.items[: order.items_to_add]:
            await sender.publish(ItemAdded(order_id=order.order_id, item=item))
            sent += 1
    wanted = {order.order_id: order.items_to_add for order in orders}
    await until(
        lambda: states_are(lambda state: len(state.items) == wanted[state.order_id]),
        "adding the items",
        workers,
    )
    print(
        f"  {sent} ItemAdded messages on one queue, taken by {len(workers.processes)} worker "
        "processes at once: their saves race, and the loser of each race is run again on "
        "fresh state"
    )

    for order in orders:
        if order.amount is not None:
            await sender.publish(PaymentReceived(order_id=order.order_id, amount=order.amount))
    paid = {order.order_id for order in orders if order.amount is not None}
    await until(
        lambda: states_are(
            lambda state: (
                state.order_id not in paid or state.workflow_status is WorkflowStatus.COMPLETE
            )
        ),
        "paying and shipping",
        workers,
    )
    report_paid(orders)
    return [await read_order(persistence, order.order_id) for order in orders]


async def run_demo_on_rabbitmq(backend: Backend, database: str, amqp: str, queue: str) -> None:
    """Run the saga on worker processes that share ``queue`` and the database."""
    from busflow.rabbitmq import DeadLetterQueue, RabbitMQTransport

    if backend.shared_uri is None:
        raise BackendUnavailableError(
            "with --amqp the worker processes need a MongoDB they can share: pass --uri "
            'mongodb://HOST/, or pip install "mongoeco[wire]" for an embedded one'
        )
    persistence = backend.new_persistence()
    collection = persistence.collection_name(OrderState)
    run_tag = uuid.uuid4().hex[:6]
    transport = RabbitMQTransport(amqp, queue=queue, prefix=queue)
    sender = Bus.configure().with_transport(transport).build()  # it sends; it handles nothing
    try:
        await persistence.initialize()  # these two fail fast, naming the host, if it is away
        async with sender:
            print_start(database, collection, run_tag)
            workers = Workers(
                SERVICE_INSTANCES,
                amqp=amqp,
                uri=backend.shared_uri,
                database=database,
                queue=queue,
            )
            try:
                await workers.ready()
                states = await run_orders_on_workers(sender, persistence, run_tag, workers)
            finally:
                said = await asyncio.to_thread(workers.stop)
        for number, words in enumerate(said, 1):
            print(f"  worker process {number}: {words}")
        async with DeadLetterQueue(amqp, queue=queue) as dead_letters:
            report_outcome(states, await dead_letters.list())
        documents = await stored_documents(persistence, states)
    finally:
        await persistence.dispose()
    print_report(
        backend,
        database,
        collection,
        states,
        documents,
        [f'busflow dead-letters list --amqp "{redact_uri(amqp)}" --queue {queue}'],
    )


def run(arguments: argparse.Namespace, *, program: str = "busflow demo") -> int:
    """Run the demo with parsed arguments; return the exit status."""
    uri, source = arguments.uri, "--uri"
    if not uri and os.environ.get("MONGODB_URI"):
        uri, source = os.environ["MONGODB_URI"], "MONGODB_URI"
    amqp: str | None = arguments.amqp or os.environ.get("AMQP_URL")
    if amqp:
        quiet_driver_logs()
    try:
        with choose_backend(uri, source, arguments.database, arguments.timeout) as backend:
            if amqp:
                print(
                    f"{program}: running on {backend.description}, with RabbitMQ at "
                    f"{redact_uri(amqp)} (from {'--amqp' if arguments.amqp else 'AMQP_URL'})",
                    flush=True,
                )
                asyncio.run(
                    run_demo_on_rabbitmq(backend, arguments.database, amqp, arguments.queue)
                )
            else:
                print(f"{program}: running on {backend.description}", flush=True)
                asyncio.run(run_demo(backend, arguments.database))
    except (BusflowError, BackendUnavailableError, DemoError) as error:
        message = str(error)
    except PyMongoError as error:
        message = f"MongoDB failed: {error} ({type(error).__name__})"
    else:
        return 0
    print(f"{program}: {mask_password(mask_password(message, uri), amqp)}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python examples/order_saga.py [--uri URI] [--database DB] [--amqp URL]``."""
    parser = CommandParser(
        prog="order_saga.py", description=__doc__.split("\n\n", 1)[0] if __doc__ else None
    )
    add_demo_arguments(parser)
    return run(parser.parse_command_line(argv), program="order_saga")


if __name__ == "__main__":
    raise SystemExit(main())
