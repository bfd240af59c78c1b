"""The collections and indexes initialize_workflow builds, and what it never touches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import Field

from busflow import (
    Bus,
    ConfigurationError,
    Message,
    MessageAttributes,
    Workflow,
    WorkflowConcurrencyError,
    WorkflowMapper,
    WorkflowState,
    WorkflowStatus,
)
from busflow.mongodb import MongoPersistence
from tests.conftest import MongoBackend
from tests.scenarios import by, find


class Booking(WorkflowState):
    workflow_name = "travel/booking"

    booking_ref: str = ""
    customer: str = Field(default="", alias="customerRef")


MAPPINGS = [by("booking_ref"), by("customer"), by("booking_ref"), by("workflow_id")]


@pytest.fixture
async def persistence(mongo_backend: MongoBackend) -> AsyncIterator[MongoPersistence]:
    persistence = MongoPersistence(client=mongo_backend.client, database=mongo_backend.database)
    await persistence.initialize()
    yield persistence
    await persistence.dispose()


def raw_collection(backend: MongoBackend, name: str = "travel_booking") -> Any:
    return backend.client[backend.database][name]


async def listed_indexes(backend: MongoBackend, name: str = "travel_booking") -> dict[str, Any]:
    collection = raw_collection(backend, name)
    cursor = collection.list_indexes()
    if asyncio.iscoroutine(cursor):
        cursor = await cursor
    return {index["name"]: index async for index in cursor}


def keys(index: Any) -> list[tuple[str, int]]:
    return [(key, int(direction)) for key, direction in dict(index["key"]).items()]


async def test_one_compound_index_per_distinct_lookup_field(
    persistence: MongoPersistence, mongo_backend: MongoBackend
) -> None:
    await persistence.initialize_workflow(Booking, MAPPINGS)

    indexes = await listed_indexes(mongo_backend)

    assert keys(indexes["busflow_lookup_booking_ref"]) == [("booking_ref", 1), ("_status", 1)]
    assert keys(indexes["busflow_lookup_customerRef"]) == [("customerRef", 1), ("_status", 1)]
    assert set(indexes) == {"_id_", "busflow_lookup_booking_ref", "busflow_lookup_customerRef"}


async def test_the_collection_exists_even_without_lookup_indexes(
    persistence: MongoPersistence, mongo_backend: MongoBackend
) -> None:
    await persistence.initialize_workflow(Booking, [by("workflow_id")])

    names = await mongo_backend.client[mongo_backend.database].list_collection_names()
    assert "travel_booking" in names


async def test_initialize_is_idempotent_and_safe_from_many_processes_at_once(
    mongo_backend: MongoBackend,
) -> None:
    processes = [
        MongoPersistence(client=mongo_backend.client, database=mongo_backend.database)
        for _ in range(4)
    ]

    await asyncio.gather(*(p.initialize_workflow(Booking, MAPPINGS) for p in processes))
    await processes[0].initialize_workflow(Booking, MAPPINGS)

    indexes = await listed_indexes(mongo_backend)
    assert len(indexes) == 3


async def test_it_never_drops_an_index_it_did_not_create(
    persistence: MongoPersistence, mongo_backend: MongoBackend
) -> None:
    collection = raw_collection(mongo_backend)
    await collection.create_index([("customerRef", -1)], name="reporting_by_customer")

    await persistence.initialize_workflow(Booking, MAPPINGS)
    await persistence.initialize_workflow(Booking, [by("booking_ref")])

    indexes = await listed_indexes(mongo_backend)
    assert "reporting_by_customer" in indexes
    assert "busflow_lookup_customerRef" in indexes


async def test_an_index_with_our_name_and_another_spec_is_a_clear_error(
    persistence: MongoPersistence, mongo_backend: MongoBackend
) -> None:
    await raw_collection(mongo_backend).create_index(
        [("booking_ref", 1)], name="busflow_lookup_booking_ref"
    )

    with pytest.raises(ConfigurationError) as raised:
        await persistence.initialize_workflow(Booking, MAPPINGS)

    message = str(raised.value)
    assert "travel_booking" in message
    assert "busflow_lookup_booking_ref" in message
    assert "dropIndex" in message
    assert "busflow_lookup_booking_ref" in await listed_indexes(mongo_backend)


async def test_unique_running_allows_one_running_workflow_per_value(
    persistence: MongoPersistence, mongo_backend: MongoBackend
) -> None:
    persistence.with_workflow_options(Booking, unique_running=["booking_ref"])
    await persistence.initialize_workflow(Booking, MAPPINGS)
    await persistence.save_workflow_state(Booking(workflow_id="wf-1", booking_ref="b-1"))

    with pytest.raises(WorkflowConcurrencyError) as raised:
        await persistence.save_workflow_state(Booking(workflow_id="wf-2", booking_ref="b-1"))

    assert "booking_ref" in str(raised.value)
    assert "b-1" in str(raised.value)
    assert raised.value.workflow_id == "wf-2"
    index = (await listed_indexes(mongo_backend))["busflow_unique_running_booking_ref"]
    assert index["unique"] is True
    assert dict(index["partialFilterExpression"]) == {"_status": "running"}


async def test_unique_running_frees_the_value_once_the_workflow_completes(
    persistence: MongoPersistence, mongo_backend: MongoBackend
) -> None:
    persistence.with_workflow_options(Booking, unique_running=["booking_ref"])
    await persistence.initialize_workflow(Booking, MAPPINGS)
    await persistence.save_workflow_state(Booking(workflow_id="wf-1", booking_ref="b-1"))
    [first] = await find(persistence, Booking, "booking_ref", "b-1")
    await persistence.save_workflow_state(
        first.model_copy(update={"workflow_status": WorkflowStatus.COMPLETE})
    )
    await persistence.save_workflow_state(Booking(workflow_id="wf-2", booking_ref="b-1"))

    found = await find(persistence, Booking, "booking_ref", "b-1", include_completed=True)
    assert sorted(state.workflow_id for state in found) == ["wf-1", "wf-2"]


async def test_unique_running_names_a_field_of_the_state(persistence: MongoPersistence) -> None:
    persistence.with_workflow_options(Booking, unique_running=["booking"])

    with pytest.raises(ConfigurationError, match="'booking'"):
        await persistence.initialize_workflow(Booking, MAPPINGS)


async def test_completed_workflows_expire_after_the_retention(
    persistence: MongoPersistence, mongo_backend: MongoBackend
) -> None:
    persistence.with_workflow_options(Booking, retain_completed=timedelta(days=30))
    await persistence.initialize_workflow(Booking, MAPPINGS)

    index = (await listed_indexes(mongo_backend))["busflow_retain_completed"]
    assert keys(index) == [("_completed_at", 1)]
    assert int(index["expireAfterSeconds"]) == 30 * 24 * 3600

    collection = raw_collection(mongo_backend)
    long_ago = datetime.now(UTC) - timedelta(days=31)
    await collection.insert_many(
        [
            {"_id": "done", "_version": 3, "_status": "complete", "_completed_at": long_ago},
            {"_id": "running", "_version": 3, "_status": "running", "_updated_at": long_ago},
        ]
    )
    # A real MongoDB's TTL monitor runs once a minute; mongoeco and mongomock expire on read.
    if mongo_backend.wire is not None and mongo_backend.wire.real_mongodb:
        pytest.skip("waiting for a real MongoDB's TTL monitor would take up to a minute")
    assert [document["_id"] async for document in collection.find({})] == ["running"]


async def test_changing_the_retention_updates_the_index_in_place(
    mongo_backend: MongoBackend,
) -> None:
    if mongo_backend.name == "mongomock":
        pytest.skip("mongomock-motor does not implement collMod")
    first = MongoPersistence(client=mongo_backend.client, database=mongo_backend.database)
    first.with_workflow_options(Booking, retain_completed=timedelta(days=30))
    await first.initialize_workflow(Booking, MAPPINGS)

    second = MongoPersistence(client=mongo_backend.client, database=mongo_backend.database)
    second.with_workflow_options(Booking, retain_completed=timedelta(days=7))
    await second.initialize_workflow(Booking, MAPPINGS)

    index = (await listed_indexes(mongo_backend))["busflow_retain_completed"]
    assert int(index["expireAfterSeconds"]) == 7 * 24 * 3600


async def test_a_lookup_uses_its_index_on_a_server_that_reports_plans(
    persistence: MongoPersistence, mongo_backend: MongoBackend
) -> None:
    if mongo_backend.wire is None or not mongo_backend.wire.real_mongodb:
        server = mongo_backend.wire.label if mongo_backend.wire else "mongomock-motor"
        pytest.skip(
            f"{server} does not report MongoDB query plans; set MONGODB_URI to a real "
            "MongoDB to run this"
        )
    await persistence.initialize_workflow(Booking, MAPPINGS)
    for n in range(50):
        await persistence.save_workflow_state(Booking(workflow_id=f"wf-{n}", booking_ref=f"b-{n}"))

    explained = await mongo_backend.client[mongo_backend.database].command(
        {
            "explain": {
                "find": "travel_booking",
                "filter": {"booking_ref": {"$eq": "b-7"}, "_status": "running"},
            },
            "verbosity": "queryPlanner",
        }
    )

    plan = str(explained["queryPlanner"]["winningPlan"])
    assert "IXSCAN" in plan
    assert "busflow_lookup_booking_ref" in plan


async def test_the_registry_records_each_workflow_for_operators(
    persistence: MongoPersistence, mongo_backend: MongoBackend
) -> None:
    await persistence.initialize_workflow(Booking, MAPPINGS)

    registry = mongo_backend.client[mongo_backend.database]["busflow_workflows"]
    entry = await registry.find_one({"_id": "travel_booking"})
    assert entry is not None
    assert entry["workflow_name"] == "travel/booking"
    assert entry["state_type"].endswith("Booking")
    assert [index["name"] for index in entry["indexes"]] == [
        "busflow_lookup_booking_ref",
        "busflow_lookup_customerRef",
    ]


async def test_a_users_hashed_or_text_index_is_left_alone(
    persistence: MongoPersistence, mongo_backend: MongoBackend
) -> None:
    if mongo_backend.name == "mongomock":
        pytest.skip("mongomock-motor does not build hashed indexes")
    await raw_collection(mongo_backend).create_index([("customerRef", "hashed")], name="shard_key")

    await persistence.initialize_workflow(Booking, MAPPINGS)

    indexes = await listed_indexes(mongo_backend)
    assert "shard_key" in indexes
    assert "busflow_lookup_customerRef" in indexes


async def test_a_duplicate_start_is_ignored_not_retried(mongo_backend: MongoBackend) -> None:
    class BookingRequested(Message):
        booking_ref: str

    class BookingWorkflow(Workflow[Booking]):
        def configure_workflow(self, mapper: WorkflowMapper[Booking]) -> None:
            mapper.with_state(Booking).started_by(BookingRequested, self.requested)

        async def requested(
            self, message: BookingRequested, state: Booking, _a: MessageAttributes
        ) -> dict[str, Any]:
            return {"booking_ref": message.booking_ref}

    persistence = MongoPersistence(client=mongo_backend.client, database=mongo_backend.database)
    persistence.with_workflow_options(Booking, unique_running=["booking_ref"])
    bus = Bus.configure().with_persistence(persistence).with_workflow(BookingWorkflow).build()
    async with bus:
        await bus.send(BookingRequested(booking_ref="b-1"))
        await bus.send(BookingRequested(booking_ref="b-1"))  # delivered twice
        await bus.wait_until_idle(timeout=5)

    assert bus.metrics.duplicate_starts == 1
    assert bus.metrics.retries == 0
    assert bus.dead_letters == []
    assert len(await find(persistence, Booking, "booking_ref", "b-1")) == 1
