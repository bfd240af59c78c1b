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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bson import json_util
from pydantic import Field
from pymongo.errors import PyMongoError

from busflow import (
    Bus,
    BusflowError,
    Message,
    MessageAttributes,
    MessageWorkflowMapping,
    RetryPolicy,
    Workflow,
    WorkflowMapper,
    WorkflowState,
)
from busflow.cli._common import RELAXED_JSON, CommandParser, add_demo_arguments
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


def build_bus(persistence: MongoPersistence) -> Bus:
    """One instance of the order service: the workflow, and a warehouse that ships."""

    async def warehouse(message: ShipOrder, attributes: MessageAttributes) -> None:
        # A plain handler; what it publishes carries the sticky workflow_id of ShipOrder.
        await bus.publish(OrderShipped(order_id=message.order_id))

    persistence.with_workflow_options(OrderState, unique_running=["order_id"])
    bus = (
        Bus.configure()
        .with_persistence(persistence)
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


async def run_orders(services: Sequence[Bus], run_tag: str) -> list[OrderState]:
    """Run the saga for this run's two orders; print what happened; return their states.

    ``services`` are instances of the order service that share one database, as separate
    processes would: messages for one order reach all of them, so their saves race.
    """
    orders = (
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

    async def wait_until_idle() -> None:
        for service in services:
            await service.wait_until_idle(timeout=30)

    for order in orders:
        placed = OrderPlaced(
            order_id=order.order_id, customer=order.customer, expected_items=len(order.items)
        )
        await services[0].publish(placed)
    await wait_until_idle()
    for order in orders:
        print(f"  {order.order_id} placed by {order.customer}, {len(order.items)} items to come")

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
    for order in orders:
        if order.amount is not None:
            print(
                f"  {order.order_id} paid {order.amount}; the workflow sent ShipOrder, and the "
                "warehouse's OrderShipped reply found it by its sticky workflow_id"
            )

    states = [await read_order(services[0], order.order_id) for order in orders]
    for state in states:
        print(f"  {state.order_id} is {describe(state)}")
    for service in services:
        for dead_letter in service.dead_letters:
            error = f"{dead_letter.error_type}: {dead_letter.error_text}"
            print(f"  failed for good: {dead_letter.handler}: {error}")
    return states


async def read_order(bus: Bus, order_id: str) -> OrderState:
    """An order's state, running or complete, as the workflow sees it."""
    [state] = await bus.persistence.get_workflow_state(
        OrderState,
        BY_ORDER_ID,
        ItemAdded(order_id=order_id, item=""),
        MessageAttributes(),
        include_completed=True,
    )
    return state


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


class BackendUnavailableError(Exception):
    """No server was given and no embedded one can run here."""


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
        )
        return
    if embedded_server_available():
        with EmbeddedServer() as server:
            yield Backend(
                lambda: MongoPersistence(server.uri, database=database, connect_timeout=timeout),
                f"an embedded mongoeco wire server at {server.uri} (no --uri or MONGODB_URI "
                "given; it runs inside this process and its data is gone when the demo ends)",
                None,
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
    )


async def run_demo(backend: Backend, database: str) -> None:
    """Run the saga on ``backend`` and print the whole report."""
    persistences = [backend.new_persistence() for _ in range(SERVICE_INSTANCES)]
    collection = persistences[0].collection_name(OrderState)
    run_tag = uuid.uuid4().hex[:6]
    try:
        await persistences[0].initialize()  # fails fast, naming the host, if it is away
        print(
            f"database {database}, collection {collection}; this run's order ids carry the "
            f"tag {run_tag}, so orders of earlier runs are left as they are"
        )
        print()
        print("What happened:")
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
    if backend.uri is not None:
        uri = redact_uri(backend.uri)
        print()
        print("Or with busflow's read-only operator commands:")
        print(f'  busflow inspect --uri "{uri}" --database {database}')
        print(f'  busflow show --uri "{uri}" --database {database} {collection} --status running')


def run(arguments: argparse.Namespace, *, program: str = "busflow demo") -> int:
    """Run the demo with parsed arguments; return the exit status."""
    uri, source = arguments.uri, "--uri"
    if not uri and os.environ.get("MONGODB_URI"):
        uri, source = os.environ["MONGODB_URI"], "MONGODB_URI"
    try:
        with choose_backend(uri, source, arguments.database, arguments.timeout) as backend:
            print(f"{program}: running on {backend.description}", flush=True)
            asyncio.run(run_demo(backend, arguments.database))
    except (BusflowError, BackendUnavailableError) as error:
        message = str(error)
    except PyMongoError as error:
        message = f"MongoDB failed: {error} ({type(error).__name__})"
    else:
        return 0
    print(f"{program}: {mask_password(message, uri)}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python examples/order_saga.py [--uri URI] [--database DB]``."""
    parser = CommandParser(
        prog="order_saga.py", description=__doc__.split("\n\n", 1)[0] if __doc__ else None
    )
    add_demo_arguments(parser)
    return run(parser.parse_command_line(argv), program="order_saga")


if __name__ == "__main__":
    raise SystemExit(main())
