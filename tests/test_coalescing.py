"""Coalescing: messages waiting for one workflow run in one batch and are saved once, with
every exactly-once rule kept, and one message at a time again after a failure."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
from pydantic import Field

from busflow import (
    Bus,
    BusflowError,
    Delivery,
    InMemoryPersistence,
    MemoryTransport,
    Message,
    MessageAttributes,
    MessageWorkflowMapping,
    TransportMessage,
    Workflow,
    WorkflowMapper,
    WorkflowState,
)
from tests.counters import (
    Bump,
    BumpTag,
    CounterState,
    CounterWorkflow,
    Report,
    Reported,
    Start,
    reporting_to,
)

BUMPS = 8


def counter_bus(
    *,
    unique: bool = True,
    coalescing: bool = True,
    reports: list[Reported] | None = None,
    persistence: InMemoryPersistence | None = None,
    transport: MemoryTransport | None = None,
    workflow: type[CounterWorkflow] = CounterWorkflow,
    before_it: Callable[[Bump, MessageAttributes], Awaitable[None]] | None = None,
) -> Bus:
    """A bus of the counter ``workflow``; ``before_it``, if given, handles each ``Bump`` too,
    registered first."""
    persistence = persistence or InMemoryPersistence()
    if unique:
        persistence.with_workflow_options(CounterState, unique_running=["key"])
    configuration = Bus.configure()
    if before_it is not None:
        configuration.with_handler(Bump, before_it)
    configuration = (
        configuration.with_persistence(persistence)
        .with_workflow(workflow)
        .with_concurrency(BUMPS)
        .with_coalescing(coalescing)
        .with_transport(transport or MemoryTransport())
    )
    return reporting_to(configuration, reports).build()


async def started(bus: Bus, key: str = "k") -> None:
    await bus.publish(Start(key=key, tag="t"))
    await bus.wait_until_idle(timeout=10)


async def counter(bus: Bus, key: str = "k") -> CounterState:
    [state] = await bus.find_workflows(CounterState, "key", key)
    return state


async def bump_while_the_first_waits(bus: Bus, *bumps: Bump) -> None:
    """The first bump pauses in its handler, so the others queue behind its workflow."""
    await bus.publish(Bump(key="k", pause=0.05))
    for bump in bumps:
        await bus.publish(bump)
    await bus.wait_until_idle(timeout=10)


async def test_waiting_messages_are_saved_in_one_write_with_every_id_applied() -> None:
    bus = counter_bus()
    async with bus:
        await started(bus)
        await bump_while_the_first_waits(bus, *(Bump(key="k") for _ in range(BUMPS - 1)))
        state = await counter(bus)

    assert state.count == BUMPS
    assert bus.metrics.coalesced == BUMPS - 1
    assert state.workflow_version == 2  # the start, then one save for every bump
    assert state.workflow_applied[1:] == state.seen  # each bump's id, in the order it ran
    assert len(set(state.seen)) == BUMPS


async def test_everything_a_batch_sends_is_dispatched_once() -> None:
    reports: list[Reported] = []
    bus = counter_bus(reports=reports)
    async with bus:
        await started(bus)
        await bus.publish(Bump(key="k", pause=0.05))
        for _ in range(3):
            await bus.publish(Report(key="k"))
            await bus.publish(Bump(key="k"))
        await bus.wait_until_idle(timeout=10)
        state = await counter(bus)

    assert bus.metrics.coalesced > 0
    assert [report.count for report in reports] == [1, 2, 3]
    assert state.count == 4


async def test_a_failure_in_a_batch_undoes_it_and_each_message_runs_on_its_own() -> None:
    bus = counter_bus()
    async with bus:
        await started(bus)
        await bump_while_the_first_waits(
            bus, Bump(key="k"), Bump(key="k", fail=True), Bump(key="k"), Bump(key="k")
        )
        state = await counter(bus)

    assert state.count == 4
    [dead] = bus.dead_letters
    assert dead.error_type == "tests.counters.BumpRefusedError"
    assert dead.attempts == 1
    assert len(state.seen) == 4
    assert state.workflow_applied[1:] == state.seen


class PublishFailedError(BusflowError):
    retryable = True


class FirstReportFails(MemoryTransport):
    """The memory transport, refusing the first ``Reported`` it is asked to publish."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0

    async def publish(self, message: TransportMessage) -> None:
        if message.name == Reported.message_name and not self.refused:
            self.refused += 1
            raise PublishFailedError("the broker is away")
        await super().publish(message)


async def test_a_batch_saved_but_not_all_sent_sends_the_rest_and_settles_every_message() -> None:
    reports: list[Reported] = []
    transport = FirstReportFails()
    bus = counter_bus(reports=reports, transport=transport)
    async with bus:
        await started(bus)
        await bus.publish(Bump(key="k", pause=0.05))
        for _ in range(3):
            await bus.publish(Report(key="k"))
        await bus.wait_until_idle(timeout=10)
        state = await counter(bus)

    assert transport.refused == 1
    assert bus.metrics.coalesced > 0
    assert sorted(report.count for report in reports) == [1, 1, 1]
    assert state.count == 1
    assert bus.dead_letters == []


async def test_a_conflict_in_a_batch_loses_nothing() -> None:
    shared = InMemoryPersistence()
    one, two = counter_bus(persistence=shared), counter_bus(persistence=shared)
    async with one, two:
        for n in range(5):
            await started(one, f"k{n}")
        for round_ in range(6):
            for n in range(5):
                await (one if round_ % 2 else two).publish(Bump(key=f"k{n}"))
        await one.wait_until_idle(timeout=10)
        await two.wait_until_idle(timeout=10)
        states = [await counter(one, f"k{n}") for n in range(5)]

    assert [state.count for state in states] == [6] * 5
    assert [len(set(state.seen)) for state in states] == [6] * 5
    assert one.dead_letters == two.dead_letters == []


async def test_messages_found_by_a_field_that_is_not_unique_are_not_batched() -> None:
    bus = counter_bus()
    async with bus:
        await started(bus)
        await bus.publish(Bump(key="k", pause=0.05))
        for _ in range(3):
            await bus.publish(BumpTag(tag="t"))
        await bus.wait_until_idle(timeout=10)
        state = await counter(bus)

    assert state.count == 301
    assert bus.metrics.coalesced == 0


async def test_without_unique_running_or_with_coalescing_off_each_message_is_saved() -> None:
    for bus in (counter_bus(unique=False), counter_bus(coalescing=False)):
        async with bus:
            await started(bus)
            await bump_while_the_first_waits(bus, *(Bump(key="k") for _ in range(3)))
            state = await counter(bus)

        assert state.count == 4
        assert bus.metrics.coalesced == 0
        assert state.workflow_version == 5


# Coalescing changes no outcome: what a message does is the same with it on or off.


class PricedState(WorkflowState):
    workflow_name = "test/priced"

    price: float = 0.0
    seen: list[str] = Field(default_factory=list)


class PriceSet(Message):
    price: float


class PriceBump(Message):
    price: float
    pause: float = 0.0


class ExactPriceBump(Message):
    price: float


class PricedWorkflow(Workflow[PricedState]):
    """Found by ``price``; ``ExactPriceBump`` looks it up by ``Decimal(price)``, which equals
    the float in Python but has 55 digits, more than any stored decimal can hold."""

    def configure_workflow(self, mapper: WorkflowMapper[PricedState]) -> None:
        by_price: MessageWorkflowMapping[Any, PricedState] = MessageWorkflowMapping(
            lookup=lambda message, _: message.price, maps_to="price"
        )
        by_exact_price: MessageWorkflowMapping[Any, PricedState] = MessageWorkflowMapping(
            lookup=lambda message, _: Decimal(message.price), maps_to="price"
        )
        (
            mapper.with_state(PricedState)
            .started_by(PriceSet, self.set_price)
            .when(PriceBump, self.bump, by_price)
            .when(ExactPriceBump, self.bump, by_exact_price)
        )

    async def set_price(
        self, message: PriceSet, state: PricedState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        return {"price": message.price}

    async def bump(
        self, message: PriceBump | ExactPriceBump, state: PricedState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        if isinstance(message, PriceBump) and message.pause:
            await asyncio.sleep(message.pause)
        return {"seen": [*state.seen, str(attributes.message_id)]}


@pytest.mark.parametrize("coalescing", [True, False])
async def test_a_waiting_lookup_no_state_can_hold_is_dead_lettered(coalescing: bool) -> None:
    persistence = InMemoryPersistence().with_workflow_options(PricedState, unique_running=["price"])
    bus = (
        Bus.configure()
        .with_persistence(persistence)
        .with_workflow(PricedWorkflow)
        .with_concurrency(4)
        .with_coalescing(coalescing)
        .build()
    )
    async with bus:
        await bus.publish(PriceSet(price=0.1))
        await bus.wait_until_idle(timeout=10)
        await bus.publish(PriceBump(price=0.1, pause=0.05), MessageAttributes(message_id="bump"))
        await bus.publish(ExactPriceBump(price=0.1), MessageAttributes(message_id="exact"))
        await bus.wait_until_idle(timeout=10)
        [state] = await bus.find_workflows(PricedState, "price", 0.1)

    assert state.seen == ["bump"]
    [dead] = bus.dead_letters
    assert (dead.message.message_id, dead.error_type) == (
        "exact",
        "busflow.InvalidLookupValueError",
    )


BY_KEY_ATTRIBUTE: MessageWorkflowMapping[Any, CounterState] = MessageWorkflowMapping(
    lookup=lambda message, attributes: attributes.attributes.get("key", message.key),
    maps_to="key",
)


class RedirectableCounter(CounterWorkflow):
    """The counter, found by the ``key`` attribute where a bump has one."""

    def configure_workflow(self, mapper: WorkflowMapper[CounterState]) -> None:
        mapper.with_state(CounterState).started_by(Start, self.start).when(
            Bump, self.bump, BY_KEY_ATTRIBUTE
        )


async def redirect(message: Bump, attributes: MessageAttributes) -> None:
    """A plain handler of the same message, which runs first and changes its attributes."""
    if attributes.message_id == "redirected":
        attributes.attributes["key"] = "k2"


@pytest.mark.parametrize("coalescing", [True, False])
async def test_a_waiting_message_goes_where_its_lookup_leads_when_it_runs(
    coalescing: bool,
) -> None:
    bus = counter_bus(coalescing=coalescing, workflow=RedirectableCounter, before_it=redirect)
    async with bus:
        await started(bus, "k")
        await started(bus, "k2")
        await bus.publish(Bump(key="k", pause=0.05), MessageAttributes(message_id="holder"))
        await bus.publish(Bump(key="k"), MessageAttributes(message_id="redirected"))
        await bus.wait_until_idle(timeout=10)
        k, k2 = await counter(bus, "k"), await counter(bus, "k2")

    assert (k.seen, k2.seen) == (["holder"], ["redirected"])


class CompletingLogs(MemoryTransport):
    """The memory transport, logging as it completes a delivery (as RabbitMQ does when the
    connection a delivery came on is lost)."""

    async def complete(self, delivery: Delivery) -> None:
        self._logger.warning("completing %s", delivery.message.message_id)
        await super().complete(delivery)


async def test_what_a_transport_logs_as_it_settles_a_batched_message_names_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = counter_bus(transport=CompletingLogs())
    with caplog.at_level(logging.WARNING, logger="busflow.transport"):
        async with bus:
            await started(bus)
            await bus.publish(Bump(key="k", pause=0.05), MessageAttributes(message_id="first"))
            for n in range(3):
                await bus.publish(Bump(key="k"), MessageAttributes(message_id=f"waiting-{n}"))
            await bus.wait_until_idle(timeout=10)

    assert bus.metrics.coalesced == 3
    completing = [
        (record.getMessage(), getattr(record, "message_id", None))
        for record in caplog.records
        if record.getMessage().startswith("completing ")
    ]
    assert len(completing) == 5  # the start, the first bump and the three batched with it
    assert all(text == f"completing {message_id}" for text, message_id in completing)
