"""busflow's benchmark: round trips, client-side overhead, the order saga, throughput, lookups.

Run it with ``python benchmarks/bench.py`` (``--help`` lists the options). It measures every
figure against one MongoDB wire-protocol server in one run: ``MONGODB_URI`` or ``--uri`` when
given, else a mongoeco wire server that it starts as a subprocess. It prints tables, then a
target table, and as its last line one JSON object with every figure. ``--check`` makes the
exit status non-zero when a deterministic target fails (round trips, commands per message,
correctness); timing targets are reported but never fail ``--check``.

This is a script, never a timed test: benchmarks/README.md explains how to read it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import Field
from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from busflow import (
    Bus,
    InMemoryPersistence,
    Message,
    MessageAttributes,
    MessageWorkflowMapping,
    Persistence,
    Workflow,
    WorkflowMapper,
    WorkflowState,
    WorkflowStatus,
)
from busflow.mongodb import MongoPersistence, redact_uri

Document = dict[str, Any]
Client = AsyncMongoClient[Document]
Collection = AsyncCollection[Document]

ITEMS_PER_ORDER = 5
MESSAGES_PER_ORDER = ITEMS_PER_ORDER + 2  # OrderPlaced, the items, OrderPaid
RAW_COMMANDS_PER_ORDER = 1 + 2 * (ITEMS_PER_ORDER + 1)  # insert, then find + findAndModify each
RAW_COMMANDS_PER_MESSAGE = RAW_COMMANDS_PER_ORDER / MESSAGES_PER_ORDER
SAGA_CONCURRENCY = 10
RESTART_COMMANDS_BEYOND_TYPES = 2
"""A restart may send 2 + N commands for N workflow types: ping, one registry read, and one
``listIndexes`` per type."""
STARTUP_WORKFLOW_TYPES = (1, 3)
IDLE_TIMEOUT = 600.0
PLAN_NOT_REPORTED = "plan not reported"


# ---------------------------------------------------------------------------------------------
# The workload: an order saga


class OrderPlaced(Message):
    order_id: str


class ItemAdded(Message):
    order_id: str
    item: str


class OrderPaid(Message):
    order_id: str


class OrderState(WorkflowState):
    workflow_name = "bench/order"

    order_id: str = ""
    items: list[str] = Field(default_factory=list)


def _order_id_of(message: Any, _attributes: MessageAttributes) -> str:
    order_id: str = message.order_id
    return order_id


BY_ORDER: MessageWorkflowMapping[Any, OrderState] = MessageWorkflowMapping(
    lookup=_order_id_of, maps_to="order_id"
)


class OrderWorkflow(Workflow[OrderState]):
    def configure_workflow(self, mapper: WorkflowMapper[OrderState]) -> None:
        mapper.with_state(OrderState).started_by(OrderPlaced, self.placed).when(
            ItemAdded, self.item_added, BY_ORDER
        ).when(OrderPaid, self.paid, BY_ORDER)

    async def placed(
        self, message: OrderPlaced, state: OrderState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        return {"order_id": message.order_id}

    async def item_added(
        self, message: ItemAdded, state: OrderState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        return {"items": [*state.items, message.item]}

    async def paid(
        self, message: OrderPaid, state: OrderState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        return self.complete_workflow()


def order_ids(count: int) -> list[str]:
    return [f"order-{n}" for n in range(count)]


def item_names() -> list[str]:
    return [f"item-{i}" for i in range(ITEMS_PER_ORDER)]


def order_document(
    workflow_id: str, order_id: str, *, version: int, items: list[str], complete: bool
) -> Document:
    """A document in busflow's shape (see MongoPersistence), for the raw driver and the loader."""
    now = datetime.now(UTC)
    document: Document = {
        "_id": workflow_id,
        "_version": version,
        "_status": (WorkflowStatus.COMPLETE if complete else WorkflowStatus.RUNNING).value,
        "_updated_at": now,
    }
    if complete:
        document["_completed_at"] = now
    document["order_id"] = order_id
    document["items"] = items
    return document


def lookup_filter(order_id: str) -> Document:
    """The filter busflow's lookup sends for ``order_id`` (running workflows only)."""
    return {"order_id": {"$eq": order_id}, "_status": WorkflowStatus.RUNNING.value}


def lookup_message(order_id: str) -> ItemAdded:
    return ItemAdded(order_id=order_id, item="")


# ---------------------------------------------------------------------------------------------
# Plumbing: the server, command counting, databases, small helpers


class CommandCounter(monitoring.CommandListener):
    """Counts the commands a client sends (PyMongo's command monitoring)."""

    def __init__(self) -> None:
        self.total = 0
        self.names: collections.Counter[str] = collections.Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.total += 1
        self.names[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    @contextlib.contextmanager
    def window(self) -> Iterator[CommandWindow]:
        """Counts the commands sent inside a ``with`` block."""
        window = CommandWindow()
        total, names = self.total, self.names.copy()
        try:
            yield window
        finally:
            window.count = self.total - total
            window.names = dict(self.names - names)


@dataclass
class CommandWindow:
    count: int = 0
    names: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Server:
    uri: str
    label: str
    embedded: bool


@contextlib.contextmanager
def embedded_server() -> Iterator[str]:
    """mongoeco's wire server in its own process, as the tests start it; stopped afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-m", "busflow.mongodb._embedded"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        uri = process.stdout.readline().strip()
        if not uri.startswith("mongodb://"):
            raise SystemExit(f"the embedded mongoeco server did not start (printed {uri!r})")
        yield uri
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


class Databases:
    """Hands out uniquely named databases and drops every one of them at the end."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._run = uuid.uuid4().hex[:10]
        self._names: list[str] = []

    def new(self, label: str) -> str:
        name = f"busflow_bench_{self._run}_{label}"
        self._names.append(name)
        return name

    async def drop_all(self) -> None:
        for name in self._names:
            await self._client.drop_database(name)


async def initialized_persistence(
    client: Client, database: str, *, recommended: bool = False
) -> MongoPersistence:
    """A MongoPersistence on ``database`` whose order collection and index exist; with
    ``recommended``, ``order_id`` is ``unique_running``, which lets the bus's state cache and
    coalescing serve the saga's lookups."""
    persistence = MongoPersistence(client=client, database=database)
    if recommended:
        persistence.with_workflow_options(OrderState, unique_running=["order_id"])
    await persistence.initialize_workflow(OrderState, [BY_ORDER])
    return persistence


def order_collection(persistence: MongoPersistence) -> Collection:
    collection: Collection = persistence.database[persistence.collection_name(OrderState)]
    return collection


async def run_pool(jobs: Sequence[Callable[[], Awaitable[None]]], concurrency: int) -> None:
    """Run ``jobs`` with at most ``concurrency`` of them at once."""
    pending = collections.deque(jobs)

    async def worker() -> None:
        while pending:
            await pending.popleft()()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def progress(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def median_us(samples: Sequence[float]) -> float:
    return statistics.median(samples) / 1_000


async def timed_ns(call: Awaitable[object]) -> int:
    started = time.perf_counter_ns()
    await call
    return time.perf_counter_ns() - started


# ---------------------------------------------------------------------------------------------
# 1. Round trips per operation


class ShipmentState(WorkflowState):
    workflow_name = "bench/shipment"

    order_id: str = ""


class ShipmentWorkflow(Workflow[ShipmentState]):
    """A second workflow type, only for the startup measure."""

    def configure_workflow(self, mapper: WorkflowMapper[ShipmentState]) -> None:
        by_order = MessageWorkflowMapping[Any, ShipmentState](
            lookup=_order_id_of, maps_to="order_id"
        )
        mapper.with_state(ShipmentState).started_by(OrderPaid, self.paid).when(
            ItemAdded, self.item_added, by_order
        )

    async def paid(
        self, message: OrderPaid, state: ShipmentState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        return {"order_id": message.order_id}

    async def item_added(
        self, message: ItemAdded, state: ShipmentState, attributes: MessageAttributes
    ) -> None:
        return None


class InvoiceState(WorkflowState):
    workflow_name = "bench/invoice"

    order_id: str = ""


class InvoiceWorkflow(Workflow[InvoiceState]):
    """A third workflow type, only for the startup measure."""

    def configure_workflow(self, mapper: WorkflowMapper[InvoiceState]) -> None:
        by_order = MessageWorkflowMapping[Any, InvoiceState](
            lookup=_order_id_of, maps_to="order_id"
        )
        mapper.with_state(InvoiceState).started_by(OrderPlaced, self.placed).when(
            OrderPaid, self.paid, by_order
        )

    async def placed(
        self, message: OrderPlaced, state: InvoiceState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        return {"order_id": message.order_id}

    async def paid(
        self, message: OrderPaid, state: InvoiceState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        return self.complete_workflow()


STARTUP_WORKFLOWS: tuple[type[Workflow[Any]], ...] = (
    OrderWorkflow,
    ShipmentWorkflow,
    InvoiceWorkflow,
)


@dataclass
class Startup:
    """A bus's ``initialize()`` on a new database (first start), then again (a restart)."""

    workflow_types: int
    first_start: CommandWindow
    restart: CommandWindow


async def bus_startup(
    client: Client, counter: CommandCounter, database: str, workflow_types: int
) -> CommandWindow:
    """The commands of one ``Bus.initialize()`` on a new MongoPersistence: the ping, then
    ``initialize_workflow`` for each of the first ``workflow_types`` workflows."""
    configuration = Bus.configure().with_persistence(
        MongoPersistence(client=client, database=database)
    )
    for workflow in STARTUP_WORKFLOWS[:workflow_types]:
        configuration = configuration.with_workflow(workflow)
    bus = configuration.build()
    with counter.window() as window:
        await bus.initialize()
    await bus.dispose()
    return window


async def measure_startup(
    client: Client, counter: CommandCounter, databases: Databases, workflow_types: int
) -> Startup:
    database = databases.new(f"startup_{workflow_types}")
    first_start = await bus_startup(client, counter, database, workflow_types)
    restart = await bus_startup(client, counter, database, workflow_types)
    return Startup(workflow_types, first_start, restart)


@dataclass
class RoundTrips:
    save_version_0: CommandWindow
    save_version_n: CommandWindow
    lookup: CommandWindow
    startups: list[Startup]
    restart_1000_documents: CommandWindow
    """A restart with one workflow type whose collection holds 1,000 documents."""
    document_shape_matches: bool


async def measure_round_trips(
    client: Client, counter: CommandCounter, databases: Databases
) -> RoundTrips:
    startups = [
        await measure_startup(client, counter, databases, types) for types in STARTUP_WORKFLOW_TYPES
    ]
    database = databases.new("round_trips")
    persistence = await initialized_persistence(client, database)
    collection = order_collection(persistence)
    state = OrderState(workflow_id=str(uuid.uuid4()), order_id="order-x", items=item_names())
    with counter.window() as save_0:
        await persistence.save_workflow_state(state)
    with counter.window() as save_n:
        await persistence.save_workflow_state(state.model_copy(update={"workflow_version": 1}))
    with counter.window() as lookup:
        found = await persistence.get_workflow_state(
            OrderState, BY_ORDER, lookup_message("order-x"), MessageAttributes()
        )
    assert len(found) == 1, found
    stored = await collection.find_one({"_id": state.workflow_id})
    ours = order_document(state.workflow_id, "order-x", version=2, items=[], complete=False)
    shape_matches = stored is not None and list(stored) == list(ours)
    await load_documents(collection, start=1, stop=1000, deadline=None)
    restart_full = await bus_startup(client, counter, database, workflow_types=1)
    return RoundTrips(save_0, save_n, lookup, startups, restart_full, shape_matches)


# ---------------------------------------------------------------------------------------------
# 2. Client-side overhead: busflow against the raw driver, A/B in rounds


@dataclass
class Overhead:
    busflow_median_us: float
    raw_median_us: float
    ratio: float
    overhead_us: float
    samples_each: int


Operation = Callable[[int], Awaitable[None]]


async def compare_ab(busflow_op: Operation, raw_op: Operation, rounds: int, batch: int) -> Overhead:
    """Alternate ``batch`` calls of each (ABBA order over rounds); compare the medians."""
    samples: dict[str, list[int]] = {"busflow": [], "raw": []}
    variants = [("busflow", busflow_op), ("raw", raw_op)]
    call = 0
    for round_number in range(rounds):
        for name, operation in variants if round_number % 2 == 0 else variants[::-1]:
            for _ in range(batch):
                samples[name].append(await timed_ns(operation(call)))
                call += 1
    busflow_us, raw_us = median_us(samples["busflow"]), median_us(samples["raw"])
    return Overhead(
        busflow_us, raw_us, busflow_us / raw_us, busflow_us - raw_us, len(samples["raw"])
    )


class OverheadFixture:
    """``count`` running orders, each with its five items, saved and read by both variants."""

    def __init__(self, persistence: MongoPersistence, count: int) -> None:
        self.persistence = persistence
        self.collection = order_collection(persistence)
        self.states = [
            OrderState(workflow_id=str(uuid.uuid4()), order_id=order_id, items=item_names())
            for order_id in order_ids(count)
        ]
        self.messages = [lookup_message(state.order_id) for state in self.states]

    async def create(self) -> None:
        for index, state in enumerate(self.states):
            await self.persistence.save_workflow_state(state)
            self.states[index] = state.model_copy(update={"workflow_version": 1})

    def _advance(self, index: int) -> None:
        state = self.states[index]
        self.states[index] = state.model_copy(
            update={"workflow_version": state.workflow_version + 1}
        )

    async def busflow_save(self, call: int) -> None:
        index = call % len(self.states)
        await self.persistence.save_workflow_state(self.states[index])
        self._advance(index)

    async def raw_save(self, call: int) -> None:
        index = call % len(self.states)
        state = self.states[index]
        version = state.workflow_version
        document = order_document(
            state.workflow_id,
            state.order_id,
            version=version + 1,
            items=state.items,
            complete=False,
        )
        replaced = await self.collection.find_one_and_replace(
            {"_id": state.workflow_id, "_version": version}, document, projection={"_id": True}
        )
        assert replaced is not None
        self._advance(index)

    async def busflow_lookup(self, call: int) -> None:
        found = await self.persistence.get_workflow_state(
            OrderState, BY_ORDER, self.messages[call % len(self.messages)], MessageAttributes()
        )
        assert len(found) == 1

    async def raw_lookup(self, call: int) -> None:
        message = self.messages[call % len(self.messages)]
        found = await self.collection.find(lookup_filter(message.order_id)).to_list()
        assert len(found) == 1


@dataclass
class OverheadResult:
    save: Overhead
    lookup: Overhead


async def measure_overhead(
    client: Client, databases: Databases, *, rounds: int, batch: int
) -> OverheadResult:
    persistence = await initialized_persistence(client, databases.new("overhead"))
    fixture = OverheadFixture(persistence, count=20)
    await fixture.create()
    warmup = max(2, rounds // 10)
    await compare_ab(fixture.busflow_save, fixture.raw_save, warmup, batch)
    save = await compare_ab(fixture.busflow_save, fixture.raw_save, rounds, batch)
    await compare_ab(fixture.busflow_lookup, fixture.raw_lookup, warmup, batch)
    lookup = await compare_ab(fixture.busflow_lookup, fixture.raw_lookup, rounds, batch)
    return OverheadResult(save, lookup)


# ---------------------------------------------------------------------------------------------
# 3 and 4. The order saga through the bus, and the raw-driver limit


@dataclass
class SagaRun:
    persistence: str
    concurrency: int
    per_workflow_order: bool
    orders: int
    messages: int
    seconds: float
    messages_per_s: float
    commands: int | None
    commands_per_message: float | None
    command_names: dict[str, int] | None
    conflicts: int
    retries: int
    dead_letters: int
    unmatched: int
    orders_correct: int
    wrong_examples: list[str]
    cpu_us_per_message: float = 0.0
    """This process's CPU time (the client's: the server runs in its own process) per message."""
    coalesced: int = 0
    state_cache_hits: int = 0

    @property
    def all_correct(self) -> bool:
        return self.orders_correct == self.orders and self.dead_letters == 0


async def publish_orders(bus: Bus, orders: list[str]) -> None:
    """Start every order; then, per order, its items and right after them the payment."""
    for order_id in orders:
        await bus.publish(OrderPlaced(order_id=order_id))
    await bus.wait_until_idle(timeout=IDLE_TIMEOUT)
    for order_id in orders:
        for item in item_names():
            await bus.publish(ItemAdded(order_id=order_id, item=item))
        await bus.publish(OrderPaid(order_id=order_id))
    await bus.wait_until_idle(timeout=IDLE_TIMEOUT)


async def check_orders(persistence: Persistence, orders: list[str]) -> list[str]:
    """Orders that did not end complete with each of their items exactly once."""
    expected = item_names()
    wrong: list[str] = []
    for order_id in orders:
        found = await persistence.get_workflow_state(
            OrderState, BY_ORDER, lookup_message(order_id), MessageAttributes(), True
        )
        complete = len(found) == 1 and found[0].workflow_status is WorkflowStatus.COMPLETE
        if not complete or sorted(found[0].items) != expected:
            summary = [(state.workflow_status.value, state.items) for state in found]
            wrong.append(f"{order_id}: {summary}")
    return wrong


async def run_bus_saga(
    persistence: Persistence,
    *,
    orders: int,
    concurrency: int,
    per_workflow_order: bool = True,
    counter: CommandCounter | None = None,
) -> SagaRun:
    bus = (
        Bus.configure()
        .with_persistence(persistence)
        .with_workflow(OrderWorkflow)
        .with_concurrency(concurrency)
        .with_per_workflow_order(per_workflow_order)
        .build()
    )
    ids = order_ids(orders)
    async with bus:
        with counter.window() if counter else contextlib.nullcontext(CommandWindow()) as commands:
            started, cpu = time.perf_counter(), time.process_time()
            await publish_orders(bus, ids)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        wrong = await check_orders(persistence, ids)
    return bus_saga_run(
        "mongodb" if isinstance(persistence, MongoPersistence) else "in-memory",
        [bus],
        orders=orders,
        concurrency=concurrency,
        per_workflow_order=per_workflow_order,
        seconds=seconds,
        cpu=cpu,
        commands=commands if counter else None,
        wrong=wrong,
    )


def bus_saga_run(
    label: str,
    buses: Sequence[Bus],
    *,
    orders: int,
    concurrency: int,
    per_workflow_order: bool,
    seconds: float,
    cpu: float,
    commands: CommandWindow | None,
    wrong: list[str],
) -> SagaRun:
    """What the buses of one saga run did, added up."""
    messages = sum(bus.metrics.messages_delivered for bus in buses)
    return SagaRun(
        persistence=label,
        concurrency=concurrency,
        per_workflow_order=per_workflow_order,
        orders=orders,
        messages=messages,
        seconds=seconds,
        messages_per_s=messages / seconds,
        commands=commands.count if commands else None,
        commands_per_message=commands.count / messages if commands else None,
        command_names=commands.names if commands else None,
        conflicts=sum(bus.metrics.conflicts for bus in buses),
        retries=sum(bus.metrics.retries for bus in buses),
        dead_letters=sum(len(bus.dead_letters) for bus in buses),
        unmatched=sum(bus.metrics.unmatched for bus in buses),
        orders_correct=orders - len(wrong),
        wrong_examples=wrong[:3],
        cpu_us_per_message=cpu / messages * 1e6,
        coalesced=sum(bus.metrics.coalesced for bus in buses),
        state_cache_hits=sum(bus.metrics.state_cache_hits for bus in buses),
    )


async def run_two_bus_saga(
    client: Client, counter: CommandCounter, databases: Databases, *, orders: int
) -> SagaRun:
    """The recommended configuration on two buses sharing one database, as two processes
    would: the starts go to one, and each order's items alternate between them, so each bus's
    cached states go stale behind its back; the payments follow once the items are in, since
    nothing orders one bus's messages after another's."""
    database = databases.new("saga_two_buses")
    buses = [
        Bus.configure()
        .with_persistence(await initialized_persistence(client, database, recommended=True))
        .with_workflow(OrderWorkflow)
        .with_concurrency(SAGA_CONCURRENCY)
        .build()
        for _ in range(2)
    ]
    ids = order_ids(orders)
    async with buses[0], buses[1]:
        with counter.window() as commands:
            started, cpu = time.perf_counter(), time.process_time()
            for order_id in ids:
                await buses[0].publish(OrderPlaced(order_id=order_id))
            await buses[0].wait_until_idle(timeout=IDLE_TIMEOUT)
            for order_id in ids:
                for n, item in enumerate(item_names()):
                    await buses[n % 2].publish(ItemAdded(order_id=order_id, item=item))
            for bus in buses:  # no order holds across buses: the payment waits for the items
                await bus.wait_until_idle(timeout=IDLE_TIMEOUT)
            for n, order_id in enumerate(ids):
                await buses[n % 2].publish(OrderPaid(order_id=order_id))
            for bus in buses:
                await bus.wait_until_idle(timeout=IDLE_TIMEOUT)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        wrong = await check_orders(buses[0].persistence, ids)
    return bus_saga_run(
        "mongodb, two buses",
        buses,
        orders=orders,
        concurrency=SAGA_CONCURRENCY,
        per_workflow_order=True,
        seconds=seconds,
        cpu=cpu,
        commands=commands,
        wrong=wrong,
    )


class RawSaga:
    """The bus's command sequence with the driver alone: no bus, no pydantic, no conflicts."""

    def __init__(self, collection: Collection, orders: list[str]) -> None:
        self.collection = collection
        self.workflow_ids = {order_id: str(uuid.uuid4()) for order_id in orders}
        self.conflicts = 0

    async def start(self, order_id: str) -> None:
        workflow_id = self.workflow_ids[order_id]
        await self.collection.insert_one(
            order_document(workflow_id, order_id, version=1, items=[], complete=False)
        )

    async def handle(self, order_id: str, item: str | None) -> None:
        """One ItemAdded (``item``) or OrderPaid (``None``): a lookup, then a versioned save."""
        [found] = await self.collection.find(lookup_filter(order_id)).to_list()
        version: int = found["_version"]
        items: list[str] = found["items"] if item is None else [*found["items"], item]
        document = order_document(
            found["_id"], order_id, version=version + 1, items=items, complete=item is None
        )
        replaced = await self.collection.find_one_and_replace(
            {"_id": found["_id"], "_version": version}, document, projection={"_id": True}
        )
        if replaced is None:
            self.conflicts += 1

    async def continue_order(self, order_id: str) -> None:
        for item in [*item_names(), None]:
            await self.handle(order_id, item)


async def run_raw_saga(
    client: Client, counter: CommandCounter, databases: Databases, *, orders: int, concurrency: int
) -> SagaRun:
    persistence = await initialized_persistence(client, databases.new("saga_raw"))
    ids = order_ids(orders)
    raw = RawSaga(order_collection(persistence), ids)
    with counter.window() as commands:
        started, cpu = time.perf_counter(), time.process_time()
        await run_pool([functools.partial(raw.start, o) for o in ids], concurrency)
        await run_pool([functools.partial(raw.continue_order, o) for o in ids], concurrency)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    wrong = await check_orders(persistence, ids)
    messages = orders * MESSAGES_PER_ORDER
    return SagaRun(
        persistence="raw driver",
        concurrency=concurrency,
        per_workflow_order=True,
        orders=orders,
        messages=messages,
        seconds=seconds,
        messages_per_s=messages / seconds,
        commands=commands.count,
        commands_per_message=commands.count / messages,
        command_names=commands.names,
        conflicts=raw.conflicts,
        retries=0,
        dead_letters=0,
        unmatched=0,
        orders_correct=orders - len(wrong),
        wrong_examples=wrong[:3],
        cpu_us_per_message=cpu / messages * 1e6,
    )


@dataclass
class OrderSaga:
    before: SagaRun
    after: SagaRun
    raw: SagaRun
    recommended: SagaRun
    """The recommended configuration's run in the median round, by its ratio to ``raw``, the
    raw driver's run in the same round (rounds interleave: raw driver, then busflow)."""
    two_buses: SagaRun
    rounds: int = 1


async def measure_order_saga(
    client: Client, counter: CommandCounter, databases: Databases, *, orders: int, rounds: int
) -> OrderSaga:
    runs: dict[str, SagaRun] = {}
    for label, ordered in (("before", False), ("after", True)):
        progress(f"order saga, {label}: per-workflow order {'on' if ordered else 'off'}")
        persistence = await initialized_persistence(client, databases.new(f"saga_{label}"))
        runs[label] = await run_bus_saga(
            persistence,
            orders=orders,
            concurrency=SAGA_CONCURRENCY,
            per_workflow_order=ordered,
            counter=counter,
        )
    pairs: list[tuple[SagaRun, SagaRun]] = []
    for round_ in range(rounds):
        progress(f"order saga, round {round_ + 1} of {rounds}: raw driver, then recommended")
        raw = await run_raw_saga(
            client, counter, databases, orders=orders, concurrency=SAGA_CONCURRENCY
        )
        persistence = await initialized_persistence(
            client, databases.new(f"saga_recommended_{round_}"), recommended=True
        )
        recommended = await run_bus_saga(
            persistence, orders=orders, concurrency=SAGA_CONCURRENCY, counter=counter
        )
        pairs.append((raw, recommended))
    pairs.sort(key=lambda pair: pair[1].messages_per_s / pair[0].messages_per_s)
    raw, recommended = pairs[len(pairs) // 2]
    progress("order saga, recommended configuration on two buses")
    two_buses = await run_two_bus_saga(client, counter, databases, orders=orders)
    return OrderSaga(runs["before"], runs["after"], raw, recommended, two_buses, rounds)


async def measure_throughput(
    client: Client, databases: Databases, *, orders: int, concurrencies: Sequence[int]
) -> list[SagaRun]:
    runs: list[SagaRun] = []
    for concurrency in concurrencies:
        progress(f"throughput at concurrency {concurrency}")
        mongo = await initialized_persistence(client, databases.new(f"throughput_{concurrency}"))
        runs.append(await run_bus_saga(mongo, orders=orders, concurrency=concurrency))
        runs.append(
            await run_bus_saga(InMemoryPersistence(), orders=orders, concurrency=concurrency)
        )
    return runs


# ---------------------------------------------------------------------------------------------
# 5. Lookup cost as the collection grows


@dataclass
class LoadLog:
    """Insert batches so far: (documents before the batch, batch size, seconds)."""

    batches: list[tuple[int, int, float]] = field(default_factory=list)

    def projected_seconds(self, start: int, stop: int) -> float:
        """Time to grow from ``start`` to ``stop`` documents, if a document's insert costs
        ``a + b * (documents already stored)`` (least squares over the batches so far)."""
        points = [(before + size / 2, seconds / size) for before, size, seconds in self.batches]
        if len(points) < 2:
            return 0.0
        mean_x = statistics.fmean(x for x, _ in points)
        mean_y = statistics.fmean(y for _, y in points)
        spread = sum((x - mean_x) ** 2 for x, _ in points)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0
        slope = max(slope, 0.0)
        intercept = max(mean_y - slope * mean_x, 0.0)
        return intercept * (stop - start) + slope * (stop**2 - start**2) / 2


LOAD_BATCH = 250


async def load_documents(
    collection: Collection,
    *,
    start: int,
    stop: int,
    deadline: float | None,
    log: LoadLog | None = None,
) -> bool:
    """Insert running orders ``start`` .. ``stop - 1`` with insert_many; False if out of time."""
    for first in range(start, stop, LOAD_BATCH):
        if deadline is not None and time.perf_counter() > deadline:
            return False
        last = min(first + LOAD_BATCH, stop)
        documents = [
            order_document(
                str(uuid.uuid4()), order_id, version=1, items=item_names(), complete=False
            )
            for order_id in (f"order-{n}" for n in range(first, last))
        ]
        began = time.perf_counter()
        await collection.insert_many(documents, ordered=False)
        if log is not None:
            log.batches.append((first, last - first, time.perf_counter() - began))
    return True


def plan_stages(plan: Any) -> list[str]:
    """Stage names in an explain plan, outermost first (classic and SBE layouts)."""
    if not isinstance(plan, Mapping):
        return []
    stages = [str(plan["stage"])] if "stage" in plan else []
    for key in ("queryPlan", "inputStage"):
        stages += plan_stages(plan.get(key))
    for child in plan.get("inputStages", []) or []:
        stages += plan_stages(child)
    return stages


async def query_plan(database: AsyncDatabase[Document], collection: str, query: Document) -> str:
    """What the server's explain says of a lookup, or that it reports no plan."""
    try:
        reply = await database.command(
            {"explain": {"find": collection, "filter": query}, "verbosity": "queryPlanner"}
        )
    except PyMongoError:
        return PLAN_NOT_REPORTED
    planner = reply.get("queryPlanner")
    stages = plan_stages(planner.get("winningPlan") if isinstance(planner, Mapping) else None)
    if not stages:
        return PLAN_NOT_REPORTED
    verdict = "index used" if "IXSCAN" in stages else "index NOT used"
    return f"{verdict} ({' > '.join(stages)})"


@dataclass
class LookupTier:
    documents: int
    measured: bool
    busflow_median_ms: float | None = None
    raw_median_ms: float | None = None
    lookups: int = 0
    plan: str | None = None
    load_seconds: float | None = None
    note: str = ""


async def measure_tier(
    persistence: MongoPersistence, size: int, lookups: int, rng: random.Random
) -> LookupTier:
    collection = order_collection(persistence)
    fixture_messages = [lookup_message(f"order-{rng.randrange(size)}") for _ in range(lookups)]

    async def busflow_lookup(call: int) -> None:
        message = fixture_messages[call % lookups]
        found = await persistence.get_workflow_state(
            OrderState, BY_ORDER, message, MessageAttributes()
        )
        assert len(found) == 1

    async def raw_lookup(call: int) -> None:
        message = fixture_messages[call % lookups]
        assert len(await collection.find(lookup_filter(message.order_id)).to_list()) == 1

    rounds = 2
    result = await compare_ab(busflow_lookup, raw_lookup, rounds, max(1, lookups // rounds))
    plan = await query_plan(persistence.database, collection.name, lookup_filter("order-0"))
    return LookupTier(
        size,
        True,
        result.busflow_median_us / 1_000,
        result.raw_median_us / 1_000,
        result.samples_each,
        plan,
    )


async def measure_lookup_growth(
    client: Client,
    databases: Databases,
    *,
    sizes: Sequence[int],
    lookups: int,
    load_budget: float,
) -> list[LookupTier]:
    """Grow one collection tier by tier; a tier whose load would blow the budget is skipped."""
    persistence = await initialized_persistence(client, databases.new("lookups"))
    collection = order_collection(persistence)
    rng = random.Random(20240611)
    log = LoadLog()
    tiers: list[LookupTier] = []
    stored = 0
    began_loading = time.perf_counter()
    deadline = began_loading + load_budget
    hard_deadline = began_loading + 1.5 * load_budget
    for size in sizes:
        remaining = deadline - time.perf_counter()
        projected = log.projected_seconds(stored, size)
        if stored and projected > remaining:
            tiers.append(skipped_tier(size, projected, remaining, log))
            continue
        progress(f"lookups: loading {size - stored:,} documents (projected {projected:.0f} s)")
        began = time.perf_counter()
        loaded = await load_documents(
            collection, start=stored, stop=size, deadline=hard_deadline, log=log
        )
        stored = await collection.count_documents({})
        if not loaded:
            tiers.append(LookupTier(size, False, note=f"load stopped at {stored:,} (over budget)"))
            break
        progress(f"lookups: {size:,} documents stored; measuring")
        tier = await measure_tier(persistence, size, lookups, rng)
        tier.load_seconds = time.perf_counter() - began
        tiers.append(tier)
    return tiers


def skipped_tier(size: int, projected: float, remaining: float, log: LoadLog) -> LookupTier:
    before, batch, seconds = log.batches[-1]
    return LookupTier(
        size,
        False,
        note=(
            f"not loaded: projected {projected:,.0f} s > {max(remaining, 0):,.0f} s of budget "
            f"left (inserts cost {seconds / batch * 1_000:.1f} ms/doc at {before:,} stored)"
        ),
    )


# ---------------------------------------------------------------------------------------------
# Targets, environment and report


@dataclass
class Target:
    name: str
    target: str
    measured: str
    passed: bool
    deterministic: bool


def evaluate_targets(
    round_trips: RoundTrips, overhead: OverheadResult, saga: OrderSaga
) -> list[Target]:
    max_commands = 1.1 * RAW_COMMANDS_PER_MESSAGE
    after, raw = saga.after, saga.raw
    restarts = {startup.workflow_types: startup.restart.count for startup in round_trips.startups}
    restart_limits = {types: RESTART_COMMANDS_BEYOND_TYPES + types for types in restarts}
    restart_full = round_trips.restart_1000_documents.count
    assert after.commands_per_message is not None
    return [
        Target(
            "save round trips (version 0 / n)",
            "1 / 1",
            f"{round_trips.save_version_0.count} / {round_trips.save_version_n.count}",
            round_trips.save_version_0.count == 1 and round_trips.save_version_n.count == 1,
            True,
        ),
        Target(
            "lookup round trips",
            "1",
            f"{round_trips.lookup.count}",
            round_trips.lookup.count == 1,
            True,
        ),
        Target(
            "restart commands (N = "
            + " / ".join(map(str, restarts))
            + " workflow types; N = 1 with 1,000 docs)",
            "<= 2 + N: " + " / ".join(map(str, restart_limits.values())) + f"; {restarts[1]}",
            " / ".join(map(str, restarts.values())) + f"; {restart_full}",
            all(restarts[types] <= restart_limits[types] for types in restarts)
            and restart_full == restarts[1],
            True,
        ),
        Target(
            "save overhead vs raw driver",
            "<= 1.10x",
            f"{overhead.save.ratio:.3f}x",
            overhead.save.ratio <= 1.10,
            False,
        ),
        Target(
            "lookup overhead vs raw driver",
            "<= 1.10x",
            f"{overhead.lookup.ratio:.3f}x",
            overhead.lookup.ratio <= 1.10,
            False,
        ),
        Target(
            "order saga commands/message (after)",
            f"<= {max_commands:.3f}",
            f"{after.commands_per_message:.3f}",
            after.commands_per_message <= max_commands,
            True,
        ),
        Target(
            "order saga correctness (after)",
            f"{after.orders}/{after.orders} complete, 0 dead",
            f"{after.orders_correct}/{after.orders}, {after.dead_letters} dead",
            after.all_correct,
            True,
        ),
        Target(
            "order saga messages/s (after)",
            f">= 0.8 x raw ({0.8 * raw.messages_per_s:,.0f})",
            f"{after.messages_per_s:,.0f} ({after.messages_per_s / raw.messages_per_s:.2f}x)",
            after.messages_per_s >= 0.8 * raw.messages_per_s,
            False,
        ),
        *recommended_targets(saga),
    ]


RECOMMENDED_COMMANDS_MAX = 0.65
RECOMMENDED_SPEED_MIN = 2.0
RECOMMENDED_CPU_MAX = 1.10


def recommended_targets(saga: OrderSaga) -> list[Target]:
    """Issue 14's targets: the recommended configuration against the raw driver."""
    recommended, raw, two = saga.recommended, saga.raw, saga.two_buses
    assert recommended.commands_per_message is not None
    speed = recommended.messages_per_s / raw.messages_per_s
    cpu = recommended.cpu_us_per_message / raw.cpu_us_per_message
    return [
        Target(
            "recommended: commands/message",
            f"<= {RECOMMENDED_COMMANDS_MAX}",
            f"{recommended.commands_per_message:.3f}",
            recommended.commands_per_message <= RECOMMENDED_COMMANDS_MAX,
            True,
        ),
        Target(
            "recommended: correctness",
            f"{recommended.orders}/{recommended.orders} complete, 0 dead",
            f"{recommended.orders_correct}/{recommended.orders}, {recommended.dead_letters} dead",
            recommended.all_correct,
            True,
        ),
        Target(
            "recommended: messages/s vs raw driver",
            f">= {RECOMMENDED_SPEED_MIN}x",
            f"{recommended.messages_per_s:,.0f} vs {raw.messages_per_s:,.0f} ({speed:.2f}x)",
            speed >= RECOMMENDED_SPEED_MIN,
            False,
        ),
        Target(
            "recommended: client CPU/message vs raw driver",
            f"<= {RECOMMENDED_CPU_MAX}x",
            f"{recommended.cpu_us_per_message:.0f} vs {raw.cpu_us_per_message:.0f} us ({cpu:.2f}x)",
            cpu <= RECOMMENDED_CPU_MAX,
            False,
        ),
        Target(
            "recommended, two buses: correctness",
            f"{two.orders}/{two.orders} complete, 0 lost, 0 dead",
            f"{two.orders_correct}/{two.orders}, {two.dead_letters} dead",
            two.all_correct,
            True,
        ),
    ]


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


async def describe_server(client: Client, server: Server) -> dict[str, str]:
    build_info = await client.admin.command("buildInfo")
    reported = str(build_info.get("version", "unknown"))
    label = server.label if server.embedded else f"MongoDB {reported} at {server.label}"
    return {"label": label, "build_info_version": reported, "uri": redact_uri(server.uri)}


def environment(server: dict[str, str]) -> dict[str, Any]:
    return {
        "server": server,
        "driver": f"pymongo {package_version('pymongo')}",
        "busflow": package_version("busflow"),
        "pydantic": package_version("pydantic"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
        },
    }


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]
    print(f"\n{title}")
    for index, row in enumerate(cells):
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  " + "  ".join("-" * width for width in widths))


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_report(report: dict[str, Any], results: Results) -> None:
    env = report["environment"]
    print(f"busflow benchmark ({report['mode']}), {report['started_at']}")
    print(f"  server : {env['server']['label']}")
    print(f"  driver : {env['driver']}; busflow {env['busflow']}; pydantic {env['pydantic']}")
    print(f"  python : {env['python']}")
    machine = env["machine"]
    print(
        f"  machine: {machine['platform']}, {machine['cpu_count']} CPU(s), {machine['cpu_model']}"
    )
    trips = results.round_trips
    print_table(
        "1. Round trips per operation (PyMongo command monitoring)",
        ["operation", "commands", "sent"],
        [
            (name, window.count, ", ".join(f"{k} x{v}" for k, v in sorted(window.names.items())))
            for name, window in (
                ("save, version 0", trips.save_version_0),
                ("save, version n", trips.save_version_n),
                ("lookup", trips.lookup),
                *(
                    (f"{when} (Bus.initialize), {startup.workflow_types} workflow type(s)", window)
                    for startup in trips.startups
                    for when, window in (
                        ("first start", startup.first_start),
                        ("restart", startup.restart),
                    )
                ),
                (
                    "restart (Bus.initialize), 1 workflow type, 1,000 docs",
                    trips.restart_1000_documents,
                ),
            )
        ],
    )
    print(f"  raw-driver documents have busflow's shape: {trips.document_shape_matches}")
    print_table(
        "2. Client-side overhead (A/B in rounds, medians of single calls, same client and docs)",
        ["operation", "busflow us", "raw us", "busflow - raw us", "ratio", "samples each"],
        [
            (
                name,
                fmt(o.busflow_median_us, 0),
                fmt(o.raw_median_us, 0),
                fmt(o.overhead_us, 0),
                f"{o.ratio:.3f}x",
                o.samples_each,
            )
            for name, o in (
                ("save (version n)", results.overhead.save),
                ("lookup", results.overhead.lookup),
            )
        ],
    )
    saga = results.saga
    print_table(
        f"3. Order saga: {saga.after.orders} orders x {MESSAGES_PER_ORDER} messages, "
        f"concurrency {SAGA_CONCURRENCY}",
        [
            "run",
            "msgs/s",
            "seconds",
            "cmds/msg",
            "conflicts",
            "retries",
            "dead",
            "unmatched",
            "orders correct",
        ],
        [
            (
                label,
                fmt(run.messages_per_s, 0),
                fmt(run.seconds),
                fmt(run.commands_per_message, 3),
                run.conflicts,
                run.retries,
                run.dead_letters,
                run.unmatched,
                f"{run.orders_correct}/{run.orders}",
            )
            for label, run in (
                ("before (per-workflow order off)", saga.before),
                ("after (per-workflow order on)", saga.after),
                ("raw-driver limit", saga.raw),
            )
        ],
    )
    print_table(
        f"3b. The recommended configuration (order_id unique_running; state cache and "
        f"coalescing on, the defaults); median of {saga.rounds} interleaved round(s)",
        [
            "run",
            "msgs/s",
            "vs raw",
            "cmds/msg",
            "client CPU us/msg",
            "coalesced",
            "cache hits",
            "conflicts",
            "orders correct",
        ],
        [
            (
                label,
                fmt(run.messages_per_s, 0),
                f"{run.messages_per_s / saga.raw.messages_per_s:.2f}x",
                fmt(run.commands_per_message, 3),
                fmt(run.cpu_us_per_message, 0),
                run.coalesced,
                run.state_cache_hits,
                run.conflicts,
                f"{run.orders_correct}/{run.orders}",
            )
            for label, run in (
                ("raw driver, same round", saga.raw),
                ("busflow, recommended", saga.recommended),
                ("busflow, recommended, two buses", saga.two_buses),
            )
        ],
    )
    for label, run in (
        ("before", saga.before),
        ("after", saga.after),
        ("recommended", saga.recommended),
        ("two buses", saga.two_buses),
    ):
        for example in run.wrong_examples:
            print(f"  {label}: wrong order {example}")
    print_table(
        "4. End-to-end throughput (order saga, per-workflow order on)",
        ["persistence", "concurrency", "msgs/s", "seconds", "orders correct"],
        [
            (
                run.persistence,
                run.concurrency,
                fmt(run.messages_per_s, 0),
                fmt(run.seconds),
                f"{run.orders_correct}/{run.orders}",
            )
            for run in results.throughput
        ],
    )
    print_table(
        "5. Lookup cost as the collection grows (get_workflow_state on order_id)",
        ["documents", "busflow median ms", "raw find median ms", "lookups", "plan / note"],
        [
            (
                f"{tier.documents:,}",
                fmt(tier.busflow_median_ms),
                fmt(tier.raw_median_ms),
                tier.lookups or "-",
                tier.plan if tier.measured else tier.note,
            )
            for tier in results.lookups
        ],
    )
    print_table(
        "Targets",
        ["target", "wanted", "measured", "result", "kind"],
        [
            (
                t.name,
                t.target,
                t.measured,
                "PASS" if t.passed else "FAIL",
                "deterministic" if t.deterministic else "timing (never fails --check)",
            )
            for t in results.targets
        ],
    )


@dataclass
class Results:
    round_trips: RoundTrips
    overhead: OverheadResult
    saga: OrderSaga
    throughput: list[SagaRun]
    lookups: list[LookupTier]
    targets: list[Target]


# ---------------------------------------------------------------------------------------------
# Running it


@dataclass(frozen=True)
class Profile:
    name: str
    orders: int
    overhead_rounds: int
    overhead_batch: int
    concurrencies: tuple[int, ...]
    lookup_sizes: tuple[int, ...]
    lookups_per_size: int
    load_budget: float
    saga_rounds: int


FULL = Profile("full", 200, 40, 25, (1, 10, 50), (1_000, 10_000, 100_000), 100, 300.0, 3)
QUICK = Profile("quick", 50, 20, 25, (1, 10, 50), (1_000, 10_000), 30, 20.0, 1)


async def measure_all(client: Client, counter: CommandCounter, profile: Profile) -> Results:
    databases = Databases(client)
    try:
        progress("round trips")
        round_trips = await measure_round_trips(client, counter, databases)
        progress("client-side overhead")
        overhead = await measure_overhead(
            client, databases, rounds=profile.overhead_rounds, batch=profile.overhead_batch
        )
        saga = await measure_order_saga(
            client, counter, databases, orders=profile.orders, rounds=profile.saga_rounds
        )
        throughput = await measure_throughput(
            client, databases, orders=profile.orders, concurrencies=profile.concurrencies
        )
        lookups = await measure_lookup_growth(
            client,
            databases,
            sizes=profile.lookup_sizes,
            lookups=profile.lookups_per_size,
            load_budget=profile.load_budget,
        )
    finally:
        progress("dropping the benchmark's databases")
        await databases.drop_all()
    targets = evaluate_targets(round_trips, overhead, saga)
    return Results(round_trips, overhead, saga, throughput, lookups, targets)


async def run(server: Server, profile: Profile) -> tuple[dict[str, Any], Results]:
    counter = CommandCounter()
    client: Client = AsyncMongoClient(
        server.uri,
        event_listeners=[counter],
        serverSelectionTimeoutMS=10_000,
        tz_aware=True,
        uuidRepresentation="standard",
        appname="busflow-bench",
    )
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    began = time.perf_counter()
    try:
        described = await describe_server(client, server)
        results = await measure_all(client, counter, profile)
    finally:
        await client.close()
    report: dict[str, Any] = {
        "benchmark": "busflow",
        "mode": profile.name,
        "started_at": started_at,
        "elapsed_s": round(time.perf_counter() - began, 1),
        "environment": environment(described),
        "profile": asdict(profile),
        **{key: value for key, value in asdict(results).items() if key != "targets"},
        "targets": [asdict(target) for target in results.targets],
        "deterministic_targets_passed": all(t.passed for t in results.targets if t.deterministic),
    }
    return report, results


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench.py",
        description=(
            "Measure busflow on MongoPersistence against one MongoDB wire-protocol server: "
            "round trips per operation, client-side overhead against the raw driver, the order "
            "saga (before/after per-workflow order, and the raw-driver limit), throughput at "
            "several concurrencies, and lookup cost as the collection grows. Prints tables, "
            "then one JSON line with every figure."
        ),
        epilog=(
            "Without --uri or MONGODB_URI it starts mongoeco's wire server "
            "(python -m busflow.mongodb._embedded) as a subprocess. mongoeco is not MongoDB: "
            "its figures say nothing about MongoDB's speed. See benchmarks/README.md."
        ),
    )
    parser.add_argument("--uri", help="MongoDB connection string (default: $MONGODB_URI)")
    parser.add_argument(
        "--quick", action="store_true", help="a small form that runs in about a minute"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if a deterministic target fails (timing targets never fail it)",
    )
    parser.add_argument(
        "--orders", type=positive_int, help="orders in the saga runs (default 200, quick 50)"
    )
    parser.add_argument(
        "--load-budget",
        type=float,
        help="seconds the lookup tiers may spend loading documents (default 300, quick 20); "
        "a tier whose projected load exceeds what is left is reported as not loaded",
    )
    return parser.parse_args(argv)


def choose_profile(arguments: argparse.Namespace) -> Profile:
    profile = QUICK if arguments.quick else FULL
    changes: dict[str, Any] = {}
    if arguments.orders is not None:
        changes["orders"] = arguments.orders
    if arguments.load_budget is not None:
        changes["load_budget"] = arguments.load_budget
    return Profile(**{**asdict(profile), **changes}) if changes else profile


@contextlib.contextmanager
def chosen_server(uri: str | None) -> Iterator[Server]:
    if uri:
        yield Server(uri, redact_uri(uri), embedded=False)
        return
    with embedded_server() as started:
        label = f"mongoeco {package_version('mongoeco')} wire server at {started}"
        yield Server(started, label, embedded=True)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    profile = choose_profile(arguments)
    logging.getLogger("busflow").setLevel(logging.CRITICAL)  # the "before" run logs retries
    with chosen_server(arguments.uri or os.environ.get("MONGODB_URI")) as server:
        report, results = asyncio.run(run(server, profile))
    print_report(report, results)
    print(f"\nelapsed: {report['elapsed_s']} s")
    print(json.dumps(report, default=str, separators=(",", ":")))
    if arguments.check and not report["deterministic_targets_passed"]:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
