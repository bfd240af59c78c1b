"""Connecting, clients of every kind, and the round trips each operation costs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import mongomock
import pytest
from pymongo import AsyncMongoClient, MongoClient
from pymongo.errors import InvalidOperation

from busflow import (
    ConfigurationError,
    PersistenceConnectionError,
    WorkflowState,
)
from busflow.mongodb import MongoPersistence, redact_uri
from tests.conftest import MongoBackend, WireServer
from tests.scenarios import by, find


class Ticket(WorkflowState):
    workflow_name = "support/ticket"

    ticket_no: str = ""
    replies: int = 0


BY_TICKET = by("ticket_no")


async def save_and_find(persistence: MongoPersistence) -> Ticket:
    await persistence.initialize_workflow(Ticket, [BY_TICKET])
    await persistence.save_workflow_state(Ticket(workflow_id="wf-1", ticket_no="t-1"))
    found = await persistence.find_workflow(Ticket, "wf-1")
    assert found is not None
    return found


async def test_an_unreachable_server_fails_fast_naming_the_host_not_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    persistence = MongoPersistence(
        "mongodb://busflow:s3cret-pw@127.0.0.1:1/?authSource=admin",
        database="workflows",
        connect_timeout=0.5,
    )
    started = time.monotonic()

    with caplog.at_level(logging.DEBUG), pytest.raises(PersistenceConnectionError) as raised:
        await persistence.initialize()

    assert time.monotonic() - started < 5, "initialize() must give up near connect_timeout"
    message = str(raised.value)
    assert "127.0.0.1:1" in message
    assert "s3cret-pw" not in message
    assert "s3cret-pw" not in repr(persistence)
    assert all("s3cret-pw" not in record.getMessage() for record in caplog.records)
    await persistence.dispose()


async def test_a_connection_string_is_all_it_takes(wire_server: WireServer) -> None:
    persistence = MongoPersistence(wire_server.uri, database="busflow_test_uri")
    await persistence.initialize()
    try:
        found = await save_and_find(persistence)
        assert found.workflow_version == 1
    finally:
        await persistence.client.drop_database("busflow_test_uri")
        await persistence.dispose()


async def test_dispose_closes_its_own_client_only(wire_server: WireServer) -> None:
    own = MongoPersistence(wire_server.uri, database="busflow_test_dispose")
    await own.initialize()
    own_client = own.client
    handed_in: AsyncMongoClient[Any] = AsyncMongoClient(wire_server.uri)
    borrowed = MongoPersistence(client=handed_in, database="busflow_test_dispose")
    await borrowed.initialize()

    await own.dispose()
    await borrowed.dispose()

    with pytest.raises(InvalidOperation):
        await own_client.admin.command("ping")
    assert (await handed_in.admin.command("ping"))["ok"] == 1
    await handed_in.close()


async def test_a_motor_client_works_when_handed_in(wire_server: WireServer) -> None:
    motor_asyncio = pytest.importorskip("motor.motor_asyncio")
    client = motor_asyncio.AsyncIOMotorClient(wire_server.uri)
    persistence = MongoPersistence(client=client, database="busflow_test_motor")
    try:
        await persistence.initialize()
        found = await save_and_find(persistence)
        assert found.ticket_no == "t-1"
    finally:
        await client.drop_database("busflow_test_motor")
        client.close()


async def test_each_operation_takes_one_round_trip(mongo_backend: MongoBackend) -> None:
    if mongo_backend.commands is None:
        pytest.skip("mongomock-motor has no command monitoring")
    persistence = MongoPersistence(client=mongo_backend.client, database=mongo_backend.database)
    await persistence.initialize_workflow(Ticket, [BY_TICKET])
    commands = mongo_backend.commands

    commands.names.clear()
    await persistence.save_workflow_state(Ticket(workflow_id="wf-1", ticket_no="t-1"))
    assert commands.names == ["insert"]

    commands.names.clear()
    [found] = await find(persistence, Ticket, "ticket_no", "t-1")
    assert commands.names == ["find"]

    commands.names.clear()
    await persistence.save_workflow_state(found.model_copy(update={"replies": 1}))
    assert commands.names == ["findAndModify"]

    commands.names.clear()
    assert await find(persistence, Ticket, "ticket_no", None) == []
    assert commands.names == [], "a lookup of None must not query"


async def test_startup_round_trips_do_not_grow_with_the_data(mongo_backend: MongoBackend) -> None:
    if mongo_backend.commands is None:
        pytest.skip("mongomock-motor has no command monitoring")
    persistence = MongoPersistence(client=mongo_backend.client, database=mongo_backend.database)
    await persistence.initialize_workflow(Ticket, [BY_TICKET])
    commands = mongo_backend.commands

    commands.names.clear()
    await persistence.initialize_workflow(Ticket, [BY_TICKET])
    with_one = list(commands.names)
    for n in range(300):
        await persistence.save_workflow_state(Ticket(workflow_id=f"wf-{n}", ticket_no=f"t-{n}"))
    commands.names.clear()
    await persistence.initialize_workflow(Ticket, [BY_TICKET])

    assert commands.names == with_one
    assert sorted(with_one) == ["find", "listIndexes"]


@pytest.mark.parametrize(
    ("uri", "secret"),
    [
        ("mongodb://bob:s3cr?et@db.example:27017/app", "s3cr?et"),
        ("mongodb://bob:p@ss/w0rd@db.example:27017/", "p@ss/w0rd"),
        ("mongodb://bob:pl%40in@db.example/?authSource=admin", "pl%40in"),
        ("mongodb://db.example/?tlsCertificateKeyFilePassword=hunter2", "hunter2"),
    ],
)
def test_passwords_never_show_in_what_busflow_prints(uri: str, secret: str) -> None:
    persistence = MongoPersistence(uri, database="workflows")

    assert secret not in redact_uri(uri)
    assert secret not in repr(persistence)
    assert "db.example" in redact_uri(uri)


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("mongodb://bob:s3cret@127.0.0.1:99999/", "Port must be an integer between 0 and 65535"),
        ("mongodb://bob:s3cret@127.0.0.1:27O17/", "Port contains non-digit characters"),
        ("mongodb://bob:s3cret@/", "Empty host"),
        ("http://bob:s3cret@db.example/", "Invalid URI scheme"),
    ],
    ids=["a port out of range", "a port with a letter", "no host", "another scheme"],
)
async def test_a_connection_string_the_driver_refuses_is_a_configuration_error(
    uri: str, reason: str
) -> None:
    persistence = MongoPersistence(uri, database="workflows")

    with pytest.raises(ConfigurationError) as raised:
        await persistence.initialize()

    message = str(raised.value)
    assert message.startswith("bad MongoDB connection string ")
    assert reason in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    ("database", "named"),
    [
        ("shop.orders", "'.'"),
        ("shop$", "'$'"),
        ("shop\x00", "'\\x00'"),
        ("my shop", "' '"),
        ("", "no database name"),
        ("shop\udcff", "is not valid UTF-8"),
        ("x" * 64, "64 bytes or more"),
    ],
)
def test_a_database_name_mongodb_refuses_is_a_configuration_error(
    database: str, named: str
) -> None:
    with pytest.raises(ConfigurationError, match=r"^MongoPersistence: ") as raised:
        MongoPersistence("mongodb://bob:s3cret@127.0.0.1/", database=database)

    assert named in str(raised.value)
    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize("prefix", ["$wf_", "wf\x00", "wf..", ".wf", "system."])
def test_a_collection_prefix_mongodb_refuses_is_a_configuration_error(prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="collection_prefix"):
        MongoPersistence("mongodb://127.0.0.1/", collection_prefix=prefix)


@pytest.mark.parametrize(
    "make_client",
    [
        lambda: MongoClient("mongodb://127.0.0.1:1/", connect=False),
        lambda: mongomock.MongoClient(),
    ],
    ids=["pymongo MongoClient", "mongomock MongoClient"],
)
def test_a_synchronous_client_is_refused_when_the_persistence_is_made(
    make_client: Callable[[], Any],
) -> None:
    client = make_client()
    try:
        with pytest.raises(
            ConfigurationError, match=r"is synchronous: pass pymongo\.AsyncMongoClient"
        ):
            MongoPersistence(client=client)
    finally:
        client.close()
