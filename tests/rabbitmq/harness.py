"""Worker processes on one queue and one database, a driver that places orders, and what the
database says afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aio_pika
from pymongo import AsyncMongoClient

from busflow import Bus, DeadLetter
from busflow.mongodb import STATUS_FIELD, MongoPersistence
from busflow.rabbitmq import DeadLetterQueue, RabbitMQTransport
from tests.rabbitmq.saga import COMPLETIONS, ItemAdded, OrderCompleted, OrderPlaced, OrderState

ROOT = Path(__file__).resolve().parent.parent.parent
MESSAGE_NAMES = (OrderPlaced.message_name, ItemAdded.message_name, OrderCompleted.message_name)
READY_WITHIN = 30.0
STOP_WITHIN = 20.0
READ_WITHIN = 5.0
"""How long the reader thread may take, once a worker has ended, to reach the end of what it
printed."""
DUPLICATE_WITHIN = 0.5
"""How long after the last completion is counted a duplicate one is waited for."""
COUNTED_WITHIN = 30.0
"""How long an order's ``OrderCompleted`` may take to be counted once the order is complete:
it leaves after the save that completes the order, and goes through the queue to a handler."""


class Worker:
    """One worker process (``tests/rabbitmq/worker.py``); its stdout lines are collected."""

    def __init__(self, command: list[str]) -> None:
        self._stderr: IO[str] = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in stop
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.strip())

    async def printed(self, line: str, *, within: float) -> None:
        deadline = time.monotonic() + within
        while line not in self.lines:
            if self.process.poll() is not None:
                await self._read_to_the_end()
                if line in self.lines:
                    return
                raise AssertionError(f"the worker ended ({self.process.returncode}): {self.log}")
            assert time.monotonic() < deadline, f"the worker never printed {line!r}: {self.log}"
            await asyncio.sleep(0.02)

    async def ended(self, *, within: float) -> int:
        """Its exit code, once it has ended and ``lines`` holds everything it printed."""
        deadline = time.monotonic() + within
        while self.process.poll() is None:
            assert time.monotonic() < deadline, f"the worker still runs after {within} s"
            await asyncio.sleep(0.02)
        await self._read_to_the_end()
        return self.process.returncode

    async def _read_to_the_end(self) -> None:
        """Wait for the reader thread to reach the end of the ended process's stdout: a line
        printed just before the end may still be on its way to ``lines``."""
        await asyncio.to_thread(self._reader.join, READ_WITHIN)
        assert not self._reader.is_alive(), f"stdout still open {READ_WITHIN} s after the end"

    @property
    def conflicts(self) -> int:
        """The version conflicts it had, once stopped gracefully."""
        [line] = [line for line in self.lines if line.startswith("conflicts ")]
        return int(line.split()[1])

    @property
    def log(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-3000:] or "(nothing on stderr)"

    def stop(self) -> None:
        """SIGTERM, a graceful stop; SIGKILL if it takes longer than ``STOP_WITHIN``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_WITHIN)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)
        assert self.process.stdout is not None
        self.process.stdout.close()
        self._stderr.close()


@dataclass
class Outcome:
    """What the database and the dead-letter queue say once the orders are done."""

    orders: dict[str, dict[str, Any]]
    completions: Counter[str]
    dead_letters: list[DeadLetter]

    def wrong_orders(self, items: int) -> list[str]:
        """Orders not complete with exactly their items, each once."""
        expected = {f"item-{i}" for i in range(items)}
        return [
            f"{order_id}: {document[STATUS_FIELD]} {document['items']}"
            for order_id, document in sorted(self.orders.items())
            if document[STATUS_FIELD] != "complete" or sorted(document["items"]) != sorted(expected)
        ]

    @property
    def duplicate_effects(self) -> dict[str, list[str]]:
        """Orders whose handler saved the effect of one message more than once."""
        return {
            order_id: [each for each, n in Counter(document["applied"]).items() if n > 1]
            for order_id, document in self.orders.items()
            if len(set(document["applied"])) != len(document["applied"])
        }

    @property
    def lost_completions(self) -> list[str]:
        """Complete orders whose ``OrderCompleted`` never reached its handler."""
        return sorted(
            order_id
            for order_id, document in self.orders.items()
            if document[STATUS_FIELD] == "complete" and not self.completions[order_id]
        )


@dataclass
class Cluster:
    """The order saga's endpoint: worker processes sharing one queue and one database."""

    amqp_url: str
    mongodb_uri: str
    name: str
    """The queue, the exchanges' prefix and the database."""
    partitions: int = 0
    """The endpoint's partitions: every worker's, and the tear-down's."""
    workers: list[Worker] = field(default_factory=list)

    async def start_worker(self, *options: str) -> Worker:
        worker = Worker(
            [
                sys.executable,
                "-m",
                "tests.rabbitmq.worker",
                "--amqp",
                self.amqp_url,
                "--mongodb",
                self.mongodb_uri,
                "--database",
                self.name,
                "--queue",
                self.name,
                "--prefix",
                self.name,
                "--partitions",
                str(self.partitions),
                *options,
            ]
        )
        self.workers.append(worker)
        await worker.printed("ready", within=READY_WITHIN)
        return worker

    async def start_workers(self, count: int, *options: str) -> list[Worker]:
        return list(await asyncio.gather(*(self.start_worker(*options) for _ in range(count))))

    def transport(self) -> RabbitMQTransport:
        return RabbitMQTransport(
            self.amqp_url, queue=self.name, prefix=self.name, partitions=self.partitions
        )

    async def place_orders(
        self, orders: int, items: int, *, first_wave: int = 0, first: int = 0
    ) -> None:
        """Start ``orders`` orders; once every one has started, send all their items at once,
        each order's one after another, so that the workers race on every order.

        With ``first_wave``, items ``0`` to ``first_wave - 1`` go first, and the others only
        once those are in every order: until then no order can complete. The orders are
        ``order-<first>`` onwards, and the database is expected to hold ``first`` before them.
        """
        driver = Bus.configure().with_transport(self.transport()).build()
        async with driver, self.database() as database:
            await _all_at_once(
                driver.publish(OrderPlaced(order_id=f"order-{n}", items=items))
                for n in range(first, first + orders)
            )
            await until(lambda: _count(database, {}), first + orders, within=60)
            for wave in (
                (range(first_wave), range(first_wave, items)) if first_wave else [range(items)]
            ):
                await _all_at_once(
                    driver.publish(ItemAdded(order_id=f"order-{n}", item=f"item-{i}"))
                    for n in range(first, first + orders)
                    for i in wave
                )
                expected = first * items + orders * wave.stop
                await until(lambda: _items(database), expected, within=120)

    async def until_complete(self, orders: int, *, within: float) -> None:
        async with self.database() as database:
            await until(lambda: _count(database, {STATUS_FIELD: "complete"}), orders, within=within)

    async def outcome(self) -> Outcome:
        """What the database holds, once every complete order's ``OrderCompleted`` has been
        counted, or ``COUNTED_WITHIN`` has passed (its handler runs only after the save that
        completed the order, so a read in between would count it as lost), and
        ``DUPLICATE_WITHIN`` more, for a second one to show."""
        deadline = time.monotonic() + COUNTED_WITHIN
        async with self.database() as database:
            while True:
                orders, completions = await _orders_and_completions(database)
                counted = Outcome(orders, completions, [])
                if not counted.lost_completions or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            # A second OrderCompleted, had one been sent, would be counted about now.
            await asyncio.sleep(DUPLICATE_WITHIN)
            orders, completions = await _orders_and_completions(database)
        async with DeadLetterQueue(self.amqp_url, queue=self.name) as dead_letters:
            return Outcome(orders, completions, await dead_letters.list())

    @contextlib.asynccontextmanager
    async def channel(self) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
        """A plain aio-pika channel, to publish what busflow would not."""
        connection = await aio_pika.connect(self.amqp_url)
        try:
            yield await connection.channel()
        finally:
            await connection.close()

    def database(self) -> _Database:
        return _Database(self.mongodb_uri, self.name)

    async def stop_workers(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(worker.stop) for worker in self.workers))

    async def tear_down(self) -> None:
        """Stop every worker, delete the queues and exchanges, drop the database."""
        await self.stop_workers()
        await self.transport().delete(MESSAGE_NAMES)
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(self.mongodb_uri)
        try:
            await client.drop_database(self.name)
        finally:
            await client.close()


class _Database:
    """``async with`` a client; yields the cluster's database."""

    def __init__(self, uri: str, name: str) -> None:
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri, serverSelectionTimeoutMS=5000
        )
        self._name = name

    async def __aenter__(self) -> Any:
        return self._client[self._name]

    async def __aexit__(self, *_: object) -> None:
        await self._client.close()


def _collection() -> str:
    return MongoPersistence("mongodb://127.0.0.1/").collection_name(OrderState)


async def _orders_and_completions(
    database: Any,
) -> tuple[dict[str, dict[str, Any]], Counter[str]]:
    collection = database[_collection()]
    orders = {document["order_id"]: document async for document in collection.find()}
    completions = Counter(
        {document["_id"]: document["count"] async for document in database[COMPLETIONS].find()}
    )
    return orders, completions


async def _count(database: Any, query: dict[str, Any]) -> int:
    return int(await database[_collection()].count_documents(query))


async def _items(database: Any) -> int:
    """How many items all orders hold."""
    pipeline = [{"$group": {"_id": None, "items": {"$sum": {"$size": "$items"}}}}]
    totals = await (await database[_collection()].aggregate(pipeline)).to_list()
    return int(totals[0]["items"]) if totals else 0


async def until(count: Callable[[], Awaitable[int]], expected: int, *, within: float) -> None:
    """Wait until ``count()`` reaches ``expected``; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while (counted := await count()) < expected:
        assert time.monotonic() < deadline, f"{counted} of {expected} after {within} s"
        await asyncio.sleep(0.1)


async def _all_at_once(sends: Iterable[Awaitable[None]], *, at_once: int = 100) -> None:
    """Await the sends together, at most ``at_once`` at a time."""
    room = asyncio.Semaphore(at_once)

    async def send(sending: Awaitable[None]) -> None:
        async with room:
            await sending

    await asyncio.gather(*(send(sending) for sending in sends))
