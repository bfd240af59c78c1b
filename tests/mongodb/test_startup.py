"""What a bus start costs in MongoDB commands, what a restart leaves alone, and the warning
about bson's C extension.

Counting commands (PyMongo command monitoring) is deterministic, so these are tests; how long
a start takes is the benchmark's business.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import bson
import pytest
from pymongo import AsyncMongoClient

from busflow import Bus
from busflow.mongodb import MongoPersistence
from tests.conftest import Commands, MongoBackend, WireServer, label_backend
from tests.faults import Fault, FaultProxy
from tests.scenarios import by
from tests.startup_workflows import Ticket, startup_workflows


def bus_of(client: Any, database: str, workflow_types: int) -> Bus:
    configuration = Bus.configure().with_persistence(
        MongoPersistence(client=client, database=database)
    )
    for workflow in startup_workflows(workflow_types):
        configuration = configuration.with_workflow(workflow)
    return configuration.build()


async def start_and_stop(client: Any, database: str, workflow_types: int) -> None:
    bus = bus_of(client, database, workflow_types)
    await bus.initialize()
    await bus.dispose()


def commands_of(backend: MongoBackend) -> Commands:
    if backend.commands is None:
        pytest.skip("mongomock-motor has no command monitoring")
    return backend.commands


@pytest.mark.parametrize("workflow_types", [1, 3])
async def test_a_restart_sends_a_ping_one_registry_read_and_one_list_indexes_per_type(
    mongo_backend: MongoBackend, workflow_types: int
) -> None:
    commands = commands_of(mongo_backend)
    await start_and_stop(mongo_backend.client, mongo_backend.database, workflow_types)

    commands.names.clear()
    await start_and_stop(mongo_backend.client, mongo_backend.database, workflow_types)

    assert Counter(commands.names) == {"ping": 1, "find": 1, "listIndexes": workflow_types}
    assert len(commands.names) <= 2 + workflow_types


@pytest.mark.parametrize("workflow_types", [1, 3])
async def test_a_first_start_registers_each_type_and_creates_its_index(
    mongo_backend: MongoBackend, workflow_types: int
) -> None:
    commands = commands_of(mongo_backend)
    commands.names.clear()

    await start_and_stop(mongo_backend.client, mongo_backend.database, workflow_types)

    assert Counter(commands.names) == {
        "ping": 1,
        "find": 1,
        "listIndexes": workflow_types,
        "update": workflow_types,
        "createIndexes": workflow_types,
    }
    registry = mongo_backend.client[mongo_backend.database]["busflow_workflows"]
    assert await registry.count_documents({}) == workflow_types


async def test_an_unchanged_registry_entry_is_left_alone_and_a_changed_one_rewritten(
    mongo_backend: MongoBackend,
) -> None:
    database = mongo_backend.client[mongo_backend.database]
    first = MongoPersistence(client=mongo_backend.client, database=mongo_backend.database)
    await first.initialize_workflow(Ticket, [by("ticket_no")])
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    await database["busflow_workflows"].update_one(
        {"_id": "startup_ticket"}, {"$set": {"registered_at": long_ago}}
    )

    restarted = MongoPersistence(client=mongo_backend.client, database=mongo_backend.database)
    await restarted.initialize_workflow(Ticket, [by("ticket_no")])
    unchanged = await database["busflow_workflows"].find_one({"_id": "startup_ticket"})

    changed = MongoPersistence(client=mongo_backend.client, database=mongo_backend.database)
    changed.with_workflow_options(Ticket, unique_running=["ticket_no"])
    await changed.initialize_workflow(Ticket, [by("ticket_no")])
    rewritten = await database["busflow_workflows"].find_one({"_id": "startup_ticket"})

    assert unchanged is not None
    assert unchanged["registered_at"].replace(tzinfo=UTC) == long_ago
    assert rewritten is not None
    assert rewritten["registered_at"].replace(tzinfo=UTC) > long_ago
    assert [index["name"] for index in rewritten["indexes"]] == [
        "busflow_lookup_ticket_no",
        "busflow_unique_running_ticket_no",
    ]


async def test_a_collection_dropped_since_it_was_registered_is_made_again(
    mongo_backend: MongoBackend,
) -> None:
    database = mongo_backend.client[mongo_backend.database]
    await start_and_stop(mongo_backend.client, mongo_backend.database, workflow_types=2)
    await database.drop_collection("startup_parcel")

    await start_and_stop(mongo_backend.client, mongo_backend.database, workflow_types=2)

    assert "startup_parcel" in await database.list_collection_names()
    cursor = database["startup_parcel"].list_indexes()
    if not hasattr(cursor, "__aiter__"):
        cursor = await cursor
    assert "busflow_lookup_parcel_no" in [index["name"] async for index in cursor]
    assert await database["busflow_workflows"].find_one({"_id": "startup_parcel"}) is not None


@pytest.mark.wire
async def test_a_collection_that_mongodb_reports_missing_is_created_on_a_restart(
    wire_server: WireServer, request: pytest.FixtureRequest
) -> None:
    """MongoDB answers ``listIndexes`` on a missing collection with NamespaceNotFound; mongoeco
    does not, so a proxy answers for it. A workflow without lookup fields has no index whose
    creation would make the collection, so busflow must create it."""
    label_backend(request, f"{wire_server.label}, through a fault-injecting proxy")
    address = urlsplit(wire_server.uri)
    assert address.hostname is not None
    database = f"busflow_test_{uuid.uuid4().hex[:12]}"
    direct: AsyncMongoClient[Any] = AsyncMongoClient(wire_server.uri)
    commands = Commands()

    def missing_tickets(name: str, body: dict[str, Any]) -> Fault | None:
        if name == "listIndexes" and body.get("listIndexes") == "startup_ticket":
            return Fault.NAMESPACE_NOT_FOUND
        return None

    try:
        await MongoPersistence(client=direct, database=database).initialize_workflow(
            Ticket, [by("workflow_id")]
        )
        await direct[database].drop_collection("startup_ticket")
        async with FaultProxy(address.hostname, address.port or 27017, missing_tickets) as proxy:
            client: AsyncMongoClient[Any] = AsyncMongoClient(proxy.uri, event_listeners=[commands])
            try:
                await MongoPersistence(client=client, database=database).initialize_workflow(
                    Ticket, [by("workflow_id")]
                )
                sent = Counter(commands.names)
            finally:
                await client.close()
        assert proxy.log.injected[Fault.NAMESPACE_NOT_FOUND] == 1
        assert sent == {"find": 1, "listIndexes": 1, "create": 1}
        assert "startup_ticket" in await direct[database].list_collection_names()
    finally:
        await direct.drop_database(database)
        await direct.close()


async def test_a_missing_bson_c_extension_is_one_warning_at_startup(
    mongo_backend: MongoBackend,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(bson, "has_c", lambda: False)
    bus = bus_of(mongo_backend.client, mongo_backend.database, workflow_types=3)

    with caplog.at_level(logging.WARNING, logger="busflow"):
        await bus.initialize()
        await bus.dispose()

    warnings = [record for record in caplog.records if "C extension" in record.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].name == "busflow.mongodb"
    assert warnings[0].levelno == logging.WARNING
    message = warnings[0].getMessage()
    assert "27% more CPU" in message
    assert "pip install --force-reinstall --only-binary=pymongo pymongo" in message


async def test_no_warning_when_bson_has_its_c_extension(
    mongo_backend: MongoBackend,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(bson, "has_c", lambda: True)
    persistence = MongoPersistence(client=mongo_backend.client, database=mongo_backend.database)

    with caplog.at_level(logging.DEBUG, logger="busflow"):
        await persistence.initialize()

    assert any(record.name == "busflow.mongodb" for record in caplog.records)
    assert not [record for record in caplog.records if "C extension" in record.getMessage()]
