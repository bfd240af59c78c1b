"""What MongoPersistence stores, as a person sees it in the mongo shell, and what it refuses."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import Field

from busflow import (
    ConfigurationError,
    InvalidStateValueError,
    MessageAttributes,
    MessageWorkflowMapping,
    StoredStateError,
    WorkflowState,
    WorkflowStatus,
)
from busflow.mongodb import MongoPersistence
from tests.conftest import MongoBackend
from tests.scenarios import Lookup, by
from tests.scenarios import find as find_states
from tests.test_memory import check_lookups_compare_as_mongodb_does


class ShopOrder(WorkflowState):
    workflow_name = "shop/order"

    order_id: str = ""
    customer: str = Field(default="", alias="customerRef")
    total: int = 0
    notes: dict[str, Any] = Field(default_factory=dict)


@pytest.fixture
async def persistence(mongo_backend: MongoBackend) -> AsyncIterator[MongoPersistence]:
    persistence = MongoPersistence(client=mongo_backend.client, database=mongo_backend.database)
    await persistence.initialize()
    await persistence.initialize_workflow(ShopOrder, [by("order_id"), by("customer")])
    yield persistence
    await persistence.dispose()


async def find(persistence: MongoPersistence, field: str, value: Any) -> list[Any]:
    return await find_states(persistence, ShopOrder, field, value)


def test_collection_names_are_readable_snake_case() -> None:
    persistence = MongoPersistence("mongodb://localhost/", database="workflows")
    prefixed = MongoPersistence("mongodb://localhost/", collection_prefix="wf_")

    assert persistence.collection_name(ShopOrder) == "shop_order"
    assert prefixed.collection_name(ShopOrder) == "wf_shop_order"

    class Saga(WorkflowState):
        workflow_name = "Billing/InvoiceSaga v2"

    assert persistence.collection_name(Saga) == "billing_invoice_saga_v2"


class RussianOrder(WorkflowState):
    workflow_name = "billing/заказ"

    total: int = 0


class ChineseOrder(WorkflowState):
    workflow_name = "billing/订单"

    total: int = 0


async def test_names_in_any_script_keep_their_letters_so_two_services_never_meet(
    mongo_backend: MongoBackend,
) -> None:
    russian, chinese = (
        MongoPersistence(client=mongo_backend.client, database=mongo_backend.database)
        for _ in range(2)
    )
    assert russian.collection_name(RussianOrder) == "billing_заказ"
    assert chinese.collection_name(ChineseOrder) == "billing_订单"

    await russian.initialize_workflow(RussianOrder, [])
    await chinese.initialize_workflow(ChineseOrder, [])
    await russian.save_workflow_state(RussianOrder(workflow_id="wf-1", total=1))
    await chinese.save_workflow_state(ChineseOrder(workflow_id="wf-1", total=2))

    [in_russian] = await find_states(russian, RussianOrder, "workflow_id", "wf-1")
    [in_chinese] = await find_states(chinese, ChineseOrder, "workflow_id", "wf-1")
    assert (in_russian.total, in_chinese.total) == (1, 2)


async def test_a_document_reads_plainly_in_the_shell(
    persistence: MongoPersistence, mongo_backend: MongoBackend
) -> None:
    order = ShopOrder.model_validate(
        {"workflow_id": "wf-1", "order_id": "o-1", "customerRef": "c-9", "total": 30}
    )
    before = datetime.now(UTC).replace(microsecond=0)

    await persistence.save_workflow_state(order)

    raw = mongo_backend.client[mongo_backend.database]["shop_order"]
    document = await raw.find_one({"order_id": "o-1"})  # db.shop_order.find({order_id: "o-1"})
    assert document is not None
    updated_at = document.pop("_updated_at")
    assert document == {
        "_id": "wf-1",
        "_version": 1,
        "_status": "running",
        "_applied": [],
        "_outbox": [],
        "_originator": None,
        "order_id": "o-1",
        "customerRef": "c-9",
        "total": 30,
        "notes": {},
    }
    assert updated_at.replace(tzinfo=UTC) >= before


async def test_completion_is_timestamped_for_retention(
    persistence: MongoPersistence, mongo_backend: MongoBackend
) -> None:
    await persistence.save_workflow_state(ShopOrder(workflow_id="wf-1", order_id="o-1"))
    [stored] = await find(persistence, "order_id", "o-1")

    await persistence.save_workflow_state(
        stored.model_copy(update={"workflow_status": WorkflowStatus.COMPLETE})
    )

    raw = mongo_backend.client[mongo_backend.database]["shop_order"]
    document = await raw.find_one({"_id": "wf-1"})
    assert document is not None
    assert document["_status"] == "complete"
    assert document["_version"] == 2
    assert isinstance(document["_completed_at"], datetime)


async def test_an_aliased_field_is_looked_up_under_its_alias(
    persistence: MongoPersistence, mongo_backend: MongoBackend
) -> None:
    await persistence.save_workflow_state(
        ShopOrder.model_validate({"workflow_id": "wf-1", "customerRef": "c-9"})
    )

    [found] = await find(persistence, "customer", "c-9")

    assert found.customer == "c-9"
    raw = mongo_backend.client[mongo_backend.database]["shop_order"]
    assert await raw.count_documents({"customerRef": "c-9"}) == 1
    assert await raw.count_documents({"customer": {"$exists": True}}) == 0


async def test_an_operator_shaped_string_matches_only_itself(
    persistence: MongoPersistence,
) -> None:
    await persistence.save_workflow_state(ShopOrder(workflow_id="wf-1", order_id="o-1"))
    await persistence.save_workflow_state(ShopOrder(workflow_id="wf-2", order_id='{"$ne": null}'))

    assert [s.workflow_id for s in await find(persistence, "order_id", '{"$ne": null}')] == ["wf-2"]
    assert await find(persistence, "order_id", "$ne") == []


async def test_a_field_the_model_dropped_is_ignored_then_gone_after_the_next_save(
    persistence: MongoPersistence, mongo_backend: MongoBackend
) -> None:
    raw = mongo_backend.client[mongo_backend.database]["shop_order"]
    await raw.insert_one(
        {
            "_id": "wf-old",
            "_version": 4,
            "_status": "running",
            "order_id": "o-old",
            "legacy_flag": True,  # an old version of ShopOrder had this field
        }
    )

    [loaded] = await find(persistence, "order_id", "o-old")
    assert loaded.workflow_version == 4
    assert loaded.total == 0  # a field added later takes its default
    await persistence.save_workflow_state(loaded.model_copy(update={"total": 5}))

    document = await raw.find_one({"_id": "wf-old"})
    assert document is not None
    assert "legacy_flag" not in document
    assert document["total"] == 5
    assert document["_version"] == 5


async def test_a_document_that_no_longer_fits_fails_loudly_and_is_left_alone(
    persistence: MongoPersistence, mongo_backend: MongoBackend
) -> None:
    raw = mongo_backend.client[mongo_backend.database]["shop_order"]
    bad = {"_id": "wf-bad", "_version": 2, "_status": "running", "order_id": "o-1", "total": "lots"}
    await raw.insert_one(dict(bad))

    with pytest.raises(StoredStateError) as raised:
        await find(persistence, "order_id", "o-1")

    message = str(raised.value)
    assert "shop_order" in message
    assert "wf-bad" in message
    assert "total" in message
    assert raised.value.workflow_id == "wf-bad"
    assert await raw.find_one({"_id": "wf-bad"}) == bad


_MISSING = object()


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"_version": "3"}, "has _version '3', of type str"),
        ({"_version": True}, "has _version True, of type bool"),
        ({"_version": 2.0}, "has _version 2.0, of type float"),
        ({"_version": 0}, "has _version 0, of type int"),
        ({"_version": _MISSING}, "has no _version"),
        ({"_status": "stuck"}, "has _status 'stuck'"),
        ({"_status": _MISSING}, "has _status None"),
    ],
    ids=[
        "_version '3'",
        "_version true",
        "_version 2.0",
        "_version 0",
        "no _version",
        "_status 'stuck'",
        "no _status",
    ],
)
async def test_a_document_whose_version_or_status_busflow_never_wrote_fails_loudly(
    persistence: MongoPersistence,
    mongo_backend: MongoBackend,
    changes: dict[str, Any],
    named: str,
) -> None:
    raw = mongo_backend.client[mongo_backend.database]["shop_order"]
    bad = {"_id": "wf-bad", "_version": 2, "_status": "running", "order_id": "o-1", **changes}
    bad = {key: value for key, value in bad.items() if value is not _MISSING}
    await raw.insert_one(dict(bad))

    with pytest.raises(StoredStateError) as raised:
        await find_states(persistence, ShopOrder, "order_id", "o-1", include_completed=True)

    assert str(raised.value).startswith(f"shop_order: the document with _id 'wf-bad' {named};")
    assert raised.value.collection == "shop_order"
    assert raised.value.workflow_id == "wf-bad"
    assert await raw.find_one({"_id": "wf-bad"}) == bad


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ({"big": 2**64}, "notes.big"),
        ({"nested": {"$where": "sleep(1000)"}}, "notes.nested['$where']"),
        ({"when": object()}, "notes.when"),
    ],
)
async def test_a_value_mongodb_cannot_hold_fails_before_any_write(
    persistence: MongoPersistence, mongo_backend: MongoBackend, value: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidStateValueError) as raised:
        await persistence.save_workflow_state(
            ShopOrder(workflow_id="wf-1", order_id="o-1", notes=value)
        )

    assert named in str(raised.value)
    assert "wf-1" in str(raised.value)
    raw = mongo_backend.client[mongo_backend.database]["shop_order"]
    assert await raw.count_documents({}) == 0


async def test_a_document_over_16_mib_fails_before_any_write_naming_the_field(
    persistence: MongoPersistence, mongo_backend: MongoBackend
) -> None:
    await persistence.save_workflow_state(ShopOrder(workflow_id="wf-1", order_id="o-1"))
    [stored] = await find(persistence, "order_id", "o-1")
    huge = {f"k{n}": "x" * 1024 for n in range(17 * 1024)}

    with pytest.raises(InvalidStateValueError, match=r"'notes'.*Nothing was written"):
        await persistence.save_workflow_state(stored.model_copy(update={"notes": huge}))

    [after] = await find(persistence, "order_id", "o-1")
    assert after.workflow_version == 1
    assert after.notes == {}


async def test_a_field_stored_under_a_reserved_name_is_refused(
    persistence: MongoPersistence,
) -> None:
    class Clashing(WorkflowState):
        workflow_name = "shop/clashing"

        version: int = Field(default=0, alias="_version")

    with pytest.raises(ConfigurationError, match="_version"):
        await persistence.initialize_workflow(Clashing, [])


async def test_a_collection_registered_to_another_workflow_name_is_refused(
    persistence: MongoPersistence, mongo_backend: MongoBackend
) -> None:
    class OtherServicesOrder(WorkflowState):
        workflow_name = "Shop-Order"  # also becomes shop_order

        order_id: str = ""

    other_service = MongoPersistence(client=mongo_backend.client, database=mongo_backend.database)

    with pytest.raises(ConfigurationError) as raised:
        await other_service.initialize_workflow(OtherServicesOrder, [by("order_id")])

    message = str(raised.value)
    assert message.startswith("shop_order: busflow_workflows registers this collection to ")
    assert "'shop/order'" in message
    assert "'Shop-Order' (OtherServicesOrder)" in message
    registry = mongo_backend.client[mongo_backend.database]["busflow_workflows"]
    entry = await registry.find_one({"_id": "shop_order"})
    assert entry is not None
    assert entry["workflow_name"] == "shop/order"


async def test_another_process_may_register_the_same_workflow(mongo_backend: MongoBackend) -> None:
    services = [
        MongoPersistence(client=mongo_backend.client, database=mongo_backend.database)
        for _ in range(3)
    ]

    await asyncio.gather(
        *(service.initialize_workflow(ShopOrder, [by("order_id")]) for service in services)
    )

    registry = mongo_backend.client[mongo_backend.database]["busflow_workflows"]
    assert await registry.count_documents({"workflow_name": "shop/order"}) == 1


async def test_two_state_types_may_not_share_a_collection(persistence: MongoPersistence) -> None:
    class Lookalike(WorkflowState):
        workflow_name = "shop-order"  # also becomes shop_order

    with pytest.raises(ConfigurationError, match="shop_order"):
        await persistence.initialize_workflow(Lookalike, [])


async def test_a_uuid_state_reads_back_through_a_client_with_default_codec_options(
    mongo_backend: MongoBackend,
) -> None:
    class Payment(WorkflowState):
        workflow_name = "shop/payment"

        reference: uuid.UUID
        at: datetime

    persistence = MongoPersistence(client=mongo_backend.client, database=mongo_backend.database)
    reference = uuid.uuid4()
    at = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    await persistence.save_workflow_state(Payment(workflow_id="wf-1", reference=reference, at=at))

    [found] = await persistence.get_workflow_state(
        Payment,
        MessageWorkflowMapping(lambda m, _a: m.value, "reference"),
        Lookup(value=reference),
        MessageAttributes(),
    )

    assert found.reference == reference
    assert found.at == at


async def test_a_field_with_only_a_serialization_alias_round_trips(
    mongo_backend: MongoBackend,
) -> None:
    class Invoice(WorkflowState):
        workflow_name = "shop/invoice"

        reference: str = Field(default="", serialization_alias="ref")

    persistence = MongoPersistence(client=mongo_backend.client, database=mongo_backend.database)
    await persistence.save_workflow_state(Invoice(workflow_id="wf-1", reference="r-1"))

    [found] = await find_states(persistence, Invoice, "reference", "r-1")

    assert found.reference == "r-1"
    raw = mongo_backend.client[mongo_backend.database]["shop_invoice"]
    assert await raw.count_documents({"ref": "r-1"}) == 1


async def test_lookups_compare_as_mongodb_does(
    persistence: MongoPersistence, mongo_backend: MongoBackend
) -> None:
    if mongo_backend.name == "mongomock":
        pytest.skip("mongomock compares True equal to 1 and Decimal128 only by its digits")
    await check_lookups_compare_as_mongodb_does(persistence)
