"""Exactly-once effects under injected faults, on the wire tier.

A fault-injecting proxy (``tests/faults.py``) sits between PyMongo and the wire server. It
loses the replies of saves whose writes happened, loses saves before they reach the server,
and stalls saves past the driver's timeout. Through all of it, every workflow must reflect
each of its messages once, every start must make one workflow, and every message that a
completing handler sends must be delivered.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pymongo.common
import pytest
from pydantic import Field
from pymongo import AsyncMongoClient

from busflow import (
    Bus,
    Message,
    MessageAttributes,
    MessageWorkflowMapping,
    RetryPolicy,
    Workflow,
    WorkflowMapper,
    WorkflowState,
)
from busflow.mongodb import MongoPersistence
from tests.conftest import WireServer, label_backend
from tests.faults import Fault, FaultProxy, Plan

pytestmark = pytest.mark.wire

COUNTS = 5


class Opened(Message):
    message_name = "faults.Opened"
    key: str


class Counted(Message):
    message_name = "faults.Counted"
    key: str
    n: int


class Closing(Message):
    message_name = "faults.Closing"
    key: str


class Closed(Message):
    message_name = "faults.Closed"
    key: str


class Tally(WorkflowState):
    workflow_name = "faults/tally"

    key: str = ""
    seen: list[int] = Field(default_factory=list)


BY_KEY: MessageWorkflowMapping[Any, Tally] = MessageWorkflowMapping(
    lambda message, _attributes: message.key, "key"
)


class TallyWorkflow(Workflow[Tally]):
    def configure_workflow(self, mapper: WorkflowMapper[Tally]) -> None:
        (
            mapper.with_state(Tally)
            .started_by(Opened, self.opened)
            .when(Counted, self.counted, BY_KEY)
            .when(Closing, self.closing, BY_KEY)
        )

    async def opened(self, message: Opened, state: Tally, _a: MessageAttributes) -> Any:
        return {"key": message.key}

    async def counted(self, message: Counted, state: Tally, _a: MessageAttributes) -> Any:
        return {"seen": [*state.seen, message.n]}

    async def closing(self, message: Closing, state: Tally, _a: MessageAttributes) -> Any:
        await self.bus.send(Closed(key=state.key))
        return self.complete_workflow()


@dataclass
class Outcome:
    keys: list[str]
    documents: list[dict[str, Any]]
    closed: list[str]
    completing_faults: int
    dead_letters: int
    extra: dict[str, int] = field(default_factory=dict)


def saves_of(collection: str, fault: Fault, every: int, completing: list[int]) -> Plan:
    """Fault every ``every``-th save (insert or findAndModify) into ``collection``."""
    count = itertools.count()

    def plan(name: str, body: dict[str, Any]) -> Fault | None:
        if name not in ("insert", "findAndModify") or body.get(name) != collection:
            return None
        if next(count) % every:
            return None
        if name == "findAndModify" and body.get("update", {}).get("_status") == "complete":
            completing.append(1)
        return fault

    return plan


@pytest.fixture
def server(
    wire_server: WireServer, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, int]:
    """The wire server's address; PyMongo re-checks a server it lost sooner than it would.

    After a cut connection the driver waits at least ``MIN_HEARTBEAT_INTERVAL`` (0.5 s)
    before it selects the server again. Hundreds of faults would make that minutes, so the
    tests shorten it; what the driver does on the fault itself is unchanged.
    """
    monkeypatch.setattr(pymongo.common, "MIN_HEARTBEAT_INTERVAL", 0.02)
    label_backend(request, f"{wire_server.label}, through a fault-injecting proxy")
    parts = urlsplit(wire_server.uri)
    assert parts.hostname is not None
    return parts.hostname, parts.port or 27017


async def run_saga(
    server: tuple[str, int],
    direct_uri: str,
    fault: Fault,
    *,
    every: int,
    workflows: int,
    socket_timeout_ms: int = 2000,
) -> tuple[Outcome, FaultProxy]:
    database = f"busflow_faults_{uuid.uuid4().hex[:10]}"
    completing: list[int] = []
    closed: list[str] = []
    proxy = FaultProxy(
        *server, saves_of("faults_tally", fault, every, completing), stall_seconds=1.0
    )
    async with proxy:
        client: AsyncMongoClient[Any] = AsyncMongoClient(
            proxy.uri,
            retryWrites=False,
            serverSelectionTimeoutMS=10_000,
            socketTimeoutMS=socket_timeout_ms,
        )

        async def on_closed(message: Closed, attributes: MessageAttributes) -> None:
            closed.append(message.key)

        bus = (
            Bus.configure()
            .with_persistence(MongoPersistence(client=client, database=database))
            .with_workflow(TallyWorkflow)
            .with_handler(Closed, on_closed)
            .with_concurrency(8)
            .with_retry_policy(RetryPolicy(max_attempts=30, base_delay=0.01, max_delay=0.2))
            .build()
        )
        keys = [f"k-{n}" for n in range(workflows)]
        async with bus:
            for key in keys:
                await bus.send(Opened(key=key))
            await bus.wait_until_idle(timeout=120)
            for n in range(1, COUNTS + 1):
                for key in keys:
                    await bus.send(Counted(key=key, n=n))
            await bus.wait_until_idle(timeout=120)
            for key in keys:
                await bus.send(Closing(key=key))
            await bus.wait_until_idle(timeout=120)
        await client.close()
    direct: AsyncMongoClient[Any] = AsyncMongoClient(direct_uri)
    try:
        documents = await direct[database]["faults_tally"].find().to_list()
        await direct.drop_database(database)
    finally:
        await direct.close()
    outcome = Outcome(
        keys=keys,
        documents=documents,
        closed=closed,
        completing_faults=len(completing),
        dead_letters=bus.metrics.dead_letters,
        extra={"duplicates": bus.metrics.duplicates, "conflicts": bus.metrics.conflicts},
    )
    return outcome, proxy


def assert_exactly_once(outcome: Outcome) -> None:
    by_key: dict[str, list[dict[str, Any]]] = {}
    for document in outcome.documents:
        by_key.setdefault(document["key"], []).append(document)
    assert sorted(by_key) == sorted(outcome.keys), "one workflow per start, none lost"
    twice = [key for key, found in by_key.items() if len(found) != 1]
    assert twice == [], "a start made more than one workflow"
    wrong = {
        key: found[0]["seen"]
        for key, found in by_key.items()
        if sorted(found[0]["seen"]) != list(range(1, COUNTS + 1))
    }
    assert wrong == {}, "each message must change its workflow exactly once"
    assert all(found[0]["_status"] == "complete" for found in by_key.values())
    assert sorted(set(outcome.closed)) == sorted(outcome.keys), "an outgoing message was lost"
    assert outcome.dead_letters == 0


async def test_lost_replies_of_every_save_change_nothing_twice(
    server: tuple[str, int], wire_server: WireServer
) -> None:
    outcome, proxy = await run_saga(
        server, wire_server.uri, Fault.LOSE_REPLY, every=1, workflows=30
    )

    assert_exactly_once(outcome)
    assert proxy.log.injected[Fault.LOSE_REPLY] >= 30 * (COUNTS + 2)
    assert proxy.log.commands["insert"] >= 30, "the reply of every start's insert was lost"
    assert outcome.completing_faults >= 30, "the reply of every completing save was lost"


async def test_lost_saves_run_again_on_fresh_state(
    server: tuple[str, int], wire_server: WireServer
) -> None:
    outcome, proxy = await run_saga(
        server, wire_server.uri, Fault.LOSE_REQUEST, every=2, workflows=30
    )

    assert_exactly_once(outcome)
    assert proxy.log.injected[Fault.LOSE_REQUEST] >= 100


async def test_a_stalled_server_past_the_drivers_timeout_changes_nothing_twice(
    server: tuple[str, int], wire_server: WireServer
) -> None:
    outcome, proxy = await run_saga(
        server, wire_server.uri, Fault.STALL, every=3, workflows=12, socket_timeout_ms=300
    )

    assert_exactly_once(outcome)
    assert proxy.log.injected[Fault.STALL] >= 25
