"""The bus's semantics, on InMemoryPersistence (which yields like a real store)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import Field

from busflow import (
    Bus,
    BusError,
    BusNotRunningError,
    ConfigurationError,
    InMemoryPersistence,
    MemoryTransport,
    Message,
    MessageAttributes,
    MessageWorkflowMapping,
    Persistence,
    RetryPolicy,
    StoredStateError,
    Workflow,
    WorkflowMapper,
    WorkflowState,
    WorkflowStatus,
)
from tests.scenarios import (
    BY_ORDER,
    ITEMS_PER_ORDER,
    CartState,
    CartWorkflow,
    ItemAdded,
    OrderPlaced,
    check_carts,
    run_cart_race,
)
from tests.scenarios import find as find_states

FAST_RETRIES = RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.005)


class PaymentRequested(Message):
    order_id: str
    amount: int


class PaymentTaken(Message):
    order_id: str


class ShipOrder(Message):
    order_id: str


class PaymentState(WorkflowState):
    workflow_name = "test/payment"

    order_id: str = ""
    amount: int = 0
    paid: bool = False


class PaymentWorkflow(Workflow[PaymentState]):
    """Asks for payment, waits for the reply by sticky workflow_id, then ships."""

    def configure_workflow(self, mapper: WorkflowMapper[PaymentState]) -> None:
        mapper.with_state(PaymentState).started_by(PaymentRequested, self.requested).when(
            PaymentTaken, self.taken
        )

    async def requested(
        self, message: PaymentRequested, state: PaymentState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        await self.bus.send(TakePayment(order_id=message.order_id))
        return {"order_id": message.order_id, "amount": message.amount}

    async def taken(
        self, message: PaymentTaken, state: PaymentState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        await self.bus.send(ShipOrder(order_id=state.order_id))
        return self.complete_workflow(paid=True)


class TakePayment(Message):
    order_id: str


def payment_bus(**handlers: Any) -> tuple[Bus, list[tuple[Message, MessageAttributes]]]:
    """A bus whose payment service replies to TakePayment, and which records ShipOrder."""
    shipped: list[tuple[Message, MessageAttributes]] = []

    async def take_payment(message: TakePayment, attributes: MessageAttributes) -> None:
        await bus.send(PaymentTaken(order_id=message.order_id))

    async def ship(message: ShipOrder, attributes: MessageAttributes) -> None:
        shipped.append((message, attributes))

    bus = (
        Bus.configure()
        .with_workflow(PaymentWorkflow)
        .with_handler(TakePayment, take_payment)
        .with_handler(ShipOrder, ship)
        .with_concurrency(4)
        .with_retry_policy(FAST_RETRIES)
        .build()
    )
    return bus, shipped


async def find(
    bus: Bus, state_type: type[Any], field: str, value: str, completed: bool = True
) -> list[Any]:
    return await find_states(bus.persistence, state_type, field, value, include_completed=completed)


# the happy path, and replies by sticky workflow_id


async def test_a_workflow_runs_from_start_to_completion() -> None:
    bus, shipped = payment_bus()
    async with bus:
        await bus.send(PaymentRequested(order_id="o-1", amount=30))
        await bus.wait_until_idle(timeout=5)

    [state] = await find(bus, PaymentState, "order_id", "o-1")
    assert state.workflow_status is WorkflowStatus.COMPLETE
    assert state.paid
    assert state.amount == 30
    assert state.workflow_version == 2
    [(message, attributes)] = shipped
    assert message == ShipOrder(order_id="o-1")
    assert attributes.sticky_attributes["workflow_id"] == state.workflow_id


async def test_derived_ids_are_the_same_as_every_earlier_release_derived() -> None:
    # A start redelivered after an upgrade must find the workflow it made, and a workflow
    # drops a message whose id it applied already: the ids a handler's messages and a started
    # workflow get are uuid5s of fixed names, pinned here as earlier releases made them.
    bus, shipped = payment_bus()
    async with bus:
        await bus.send(
            PaymentRequested(order_id="o-1", amount=30), MessageAttributes(message_id="request-1")
        )
        await bus.wait_until_idle(timeout=5)

    [state] = await find(bus, PaymentState, "order_id", "o-1")
    assert state.workflow_id == "da5de51b-d2d1-5adb-9854-c433ba88bea6"
    assert state.workflow_applied == [
        "request-1",
        "e6ba59c4-eade-54b3-827a-9f9f6c30af90",  # PaymentTaken, sent by take_payment
    ]
    [(_, attributes)] = shipped
    assert attributes.message_id == "5274572a-04f1-53b0-bc2c-920ea513d5d5"


async def test_sticky_workflow_ids_do_not_leak_between_concurrent_handlers() -> None:
    bus, shipped = payment_bus()
    async with bus:
        for n in range(40):
            await bus.send(PaymentRequested(order_id=f"o-{n}", amount=n))
        await bus.wait_until_idle(timeout=10)

    assert len(shipped) == 40
    for message, attributes in shipped:
        assert isinstance(message, ShipOrder)
        [state] = await find(bus, PaymentState, "order_id", message.order_id)
        assert attributes.sticky_attributes["workflow_id"] == state.workflow_id
        assert state.paid


async def test_sticky_and_correlation_attributes_follow_the_conversation() -> None:
    bus, shipped = payment_bus()
    async with bus:
        await bus.send(
            PaymentRequested(order_id="o-1", amount=1),
            MessageAttributes(correlation_id="corr-1", sticky_attributes={"tenant": "acme"}),
        )
        await bus.wait_until_idle(timeout=5)

    [(_, attributes)] = shipped
    assert attributes.correlation_id == "corr-1"
    assert attributes.sticky_attributes["tenant"] == "acme"


# concurrency


async def test_racing_messages_lose_no_update() -> None:
    bus = (
        Bus.configure()
        .with_workflow(CartWorkflow)
        .with_concurrency(10)
        .with_per_workflow_order(False)
        .build()
    )
    async with bus:
        result = await run_cart_race(bus, orders=100)

    assert result.lost == []
    assert result.complete == 100
    assert result.dead_letters == 0
    assert result.conflicts > 0, "the race was not real: no save ever conflicted"


async def test_messages_for_one_workflow_do_not_race_within_a_bus() -> None:
    bus = Bus.configure().with_workflow(CartWorkflow).with_concurrency(10).build()
    async with bus:
        result = await run_cart_race(bus, orders=100)

    assert result.lost == []
    assert result.complete == 100
    assert result.conflicts == 0
    assert bus.metrics.handler_runs == 100 + 100 * ITEMS_PER_ORDER


async def test_messages_for_one_workflow_are_handled_in_arrival_order() -> None:
    bus = Bus.configure().with_workflow(CartWorkflow).with_concurrency(10).build()
    async with bus:
        for n in range(20):
            await bus.publish(OrderPlaced(order_id=f"order-{n}"))
        await bus.wait_until_idle(timeout=10)
        for i in range(ITEMS_PER_ORDER):
            for n in range(20):
                await bus.publish(ItemAdded(order_id=f"order-{n}", item=f"item-{i}"))
        await bus.wait_until_idle(timeout=10)

        for n in range(20):
            [cart] = await find(bus, CartState, "order_id", f"order-{n}")
            assert cart.items == [f"item-{i}" for i in range(ITEMS_PER_ORDER)]


async def test_buses_sharing_a_store_still_race_and_lose_nothing() -> None:
    """Two buses on one store stand for two processes: optimistic concurrency guards them."""
    shared = InMemoryPersistence()
    one, two = (
        Bus.configure()
        .with_persistence(shared)
        .with_workflow(CartWorkflow)
        .with_concurrency(5)
        .build()
        for _ in range(2)
    )
    async with one, two:
        for n in range(50):
            await one.publish(OrderPlaced(order_id=f"order-{n}"))
        await one.wait_until_idle(timeout=10)
        for n in range(50):
            for i in range(ITEMS_PER_ORDER):
                await (one if i % 2 else two).publish(
                    ItemAdded(order_id=f"order-{n}", item=f"item-{i}")
                )
        await asyncio.gather(one.wait_until_idle(timeout=30), two.wait_until_idle(timeout=30))
        result = await check_carts(shared, orders=50, bus=one)

    assert result.lost == []
    assert result.complete == 50
    assert one.metrics.conflicts + two.metrics.conflicts > 0


class TwoTargets(Message):
    group: str


class GroupState(WorkflowState):
    workflow_name = "test/group"

    group: str = ""
    name: str = ""
    seen: int = 0


class GroupWorkflow(Workflow[GroupState]):
    def __init__(self) -> None:
        self.runs: dict[str, int] = {}
        self.interfere_with: str | None = None

    def configure_workflow(self, mapper: WorkflowMapper[GroupState]) -> None:
        mapper.with_state(GroupState).started_by(StartGroup, self.start).when(
            TwoTargets,
            self.touch,
            MessageWorkflowMapping(lambda message, _a: message.group, "group"),
        )

    async def start(
        self, message: StartGroup, state: GroupState, _a: MessageAttributes
    ) -> dict[str, Any]:
        return {"group": message.group, "name": message.name}

    async def touch(
        self, message: TwoTargets, state: GroupState, _a: MessageAttributes
    ) -> dict[str, Any]:
        self.runs[state.name] = self.runs.get(state.name, 0) + 1
        if state.name == self.interfere_with:
            self.interfere_with = None
            # Another writer saves this workflow while the handler runs.
            await persistence_of(self).save_workflow_state(state.model_copy(update={"seen": 100}))
        return {"seen": state.seen + 1}


class StartGroup(Message):
    group: str
    name: str


def persistence_of(workflow: Workflow[Any]) -> Persistence:
    """The persistence of the bus that a test registered ``workflow`` on."""
    persistence: Persistence = workflow.persistence  # type: ignore[attr-defined]
    return persistence


async def test_a_conflict_reruns_the_handler_for_that_workflow_only() -> None:
    workflow = GroupWorkflow()
    bus = Bus.configure().with_workflow(workflow).with_retry_policy(FAST_RETRIES).build()
    workflow.persistence = bus.persistence  # type: ignore[attr-defined]
    async with bus:
        await bus.send(StartGroup(group="g", name="a"))
        await bus.send(StartGroup(group="g", name="b"))
        await bus.wait_until_idle(timeout=5)
        workflow.interfere_with = "b"

        await bus.send(TwoTargets(group="g"))
        await bus.wait_until_idle(timeout=5)

    assert workflow.runs == {"a": 1, "b": 2}
    states = {state.name: state for state in await find(bus, GroupState, "group", "g")}
    assert states["a"].seen == 1
    assert states["b"].seen == 101, "the re-run must see the other writer's change"
    assert bus.metrics.conflicts == 1


class Ping(Message):
    key: str


class Pong(Message):
    key: str


class ConflictingSenderState(WorkflowState):
    workflow_name = "test/conflicting-sender"

    key: str = ""
    count: int = 0


class ConflictingSender(Workflow[ConflictingSenderState]):
    """Sends Pong on every Ping; the first save of each handler run is made to conflict."""

    def __init__(self) -> None:
        self.conflict_next = True

    def configure_workflow(self, mapper: WorkflowMapper[ConflictingSenderState]) -> None:
        mapper.with_state(ConflictingSenderState).started_by(StartGroup, self.start).when(
            Ping, self.ping, MessageWorkflowMapping(lambda m, _a: m.key, "key")
        )

    async def start(
        self, message: StartGroup, _s: ConflictingSenderState, _a: MessageAttributes
    ) -> dict[str, Any]:
        return {"key": message.group}

    async def ping(
        self, message: Ping, state: ConflictingSenderState, _a: MessageAttributes
    ) -> dict[str, Any]:
        await self.bus.send(Pong(key=message.key))
        if self.conflict_next:
            self.conflict_next = False
            await persistence_of(self).save_workflow_state(state)
        return {"count": state.count + 1}


async def test_messages_leave_only_after_the_save_and_once() -> None:
    pongs: list[Pong] = []

    async def on_pong(message: Pong, _a: MessageAttributes) -> None:
        pongs.append(message)

    workflow = ConflictingSender()
    bus = (
        Bus.configure()
        .with_workflow(workflow)
        .with_handler(Pong, on_pong)
        .with_retry_policy(FAST_RETRIES)
        .build()
    )
    workflow.persistence = bus.persistence  # type: ignore[attr-defined]
    async with bus:
        await bus.send(StartGroup(group="k", name="x"))
        await bus.wait_until_idle(timeout=5)
        await bus.send(Ping(key="k"))
        await bus.wait_until_idle(timeout=5)

    assert bus.metrics.conflicts == 1
    assert pongs == [Pong(key="k")], "the conflicted run must not have sent its Pong"


# handler results


class Rename(Message):
    key: str


class RenameState(WorkflowState):
    workflow_name = "test/rename"

    key: str = ""
    label: str = ""


class WholeStateWorkflow(Workflow[RenameState]):
    def configure_workflow(self, mapper: WorkflowMapper[RenameState]) -> None:
        mapper.with_state(RenameState).started_by(StartGroup, self.start).when(
            Rename, self.rename, MessageWorkflowMapping(lambda m, _a: m.key, "key")
        )

    async def start(
        self, message: StartGroup, state: RenameState, _a: MessageAttributes
    ) -> RenameState:
        return state.model_copy(update={"key": message.group})

    async def rename(
        self, message: Rename, state: RenameState, _a: MessageAttributes
    ) -> RenameState:
        return RenameState(
            workflow_id="hijacked", workflow_version=99, key=state.key, label="renamed"
        )


async def test_a_returned_state_cannot_change_the_id_or_version() -> None:
    bus = Bus.configure().with_workflow(WholeStateWorkflow).build()
    async with bus:
        await bus.send(StartGroup(group="k", name="x"))
        await bus.wait_until_idle(timeout=5)
        [started] = await find(bus, RenameState, "key", "k")
        await bus.send(Rename(key="k"))
        await bus.wait_until_idle(timeout=5)

    [renamed] = await find(bus, RenameState, "key", "k")
    assert renamed.workflow_id == started.workflow_id
    assert renamed.workflow_version == 2
    assert renamed.label == "renamed"
    assert await find(bus, RenameState, "workflow_id", "hijacked") == []


class MaybeStart(Message):
    key: str
    wanted: bool


class DiscardState(WorkflowState):
    workflow_name = "test/discard"

    key: str = ""


class DiscardingWorkflow(Workflow[DiscardState]):
    def configure_workflow(self, mapper: WorkflowMapper[DiscardState]) -> None:
        mapper.with_state(DiscardState).started_by(MaybeStart, self.maybe)

    async def maybe(
        self, message: MaybeStart, state: DiscardState, _a: MessageAttributes
    ) -> dict[str, Any] | None:
        if not message.wanted:
            return self.discard_workflow()
        if message.key == "defaults":
            return None
        return {"key": message.key}


async def test_started_by_saves_unless_discarded() -> None:
    bus = Bus.configure().with_workflow(DiscardingWorkflow).build()
    async with bus:
        await bus.send(MaybeStart(key="kept", wanted=True))
        await bus.send(MaybeStart(key="dropped", wanted=False))
        await bus.send(MaybeStart(key="defaults", wanted=True))
        await bus.wait_until_idle(timeout=5)

    [kept] = await find(bus, DiscardState, "key", "kept")
    assert kept.workflow_version == 1
    assert await find(bus, DiscardState, "key", "dropped") == []
    [unchanged] = await find(bus, DiscardState, "key", "")
    assert unchanged.workflow_status is WorkflowStatus.RUNNING


async def test_a_completed_workflow_gets_no_more_messages() -> None:
    bus, shipped = payment_bus()
    async with bus:
        await bus.send(PaymentRequested(order_id="o-1", amount=1))
        await bus.wait_until_idle(timeout=5)
        [done] = await find(bus, PaymentState, "order_id", "o-1")

        await bus.send(
            PaymentTaken(order_id="o-1"),
            MessageAttributes(sticky_attributes={"workflow_id": done.workflow_id}),
        )
        await bus.wait_until_idle(timeout=5)

    assert len(shipped) == 1
    assert bus.metrics.unmatched == 1
    [after] = await find(bus, PaymentState, "order_id", "o-1")
    assert after.workflow_version == done.workflow_version
    assert await find(bus, PaymentState, "order_id", "o-1", completed=False) == []


async def test_an_unmatched_message_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    bus, shipped = payment_bus()
    with caplog.at_level(logging.INFO, logger="busflow"):
        async with bus:
            await bus.send(
                PaymentTaken(order_id="nobody"),
                MessageAttributes(sticky_attributes={"workflow_id": "missing"}),
            )
            await bus.wait_until_idle(timeout=5)

    assert shipped == []
    assert bus.dead_letters == []
    assert any(
        "missing" in record.getMessage() and "ignored" in record.getMessage()
        for record in caplog.records
    )


class Ask(Message):
    question: str


class Request(Message):
    question: str


class Answer(Message):
    text: str


class AskerState(WorkflowState):
    workflow_name = "test/asker"

    answer: str = ""


class AnswererState(WorkflowState):
    workflow_name = "test/answerer"


class Asker(Workflow[AskerState]):
    """Asks, and completes before the answer comes: the answer finds no running asker."""

    def configure_workflow(self, mapper: WorkflowMapper[AskerState]) -> None:
        mapper.with_state(AskerState).started_by(Ask, self.ask).when(Answer, self.answered)

    async def ask(self, message: Ask, state: AskerState, _: MessageAttributes) -> dict[str, Any]:
        await self.bus.send(Request(question=message.question))
        return self.complete_workflow() if message.question == "impatient" else {}

    async def answered(self, message: Answer, state: AskerState, _: MessageAttributes) -> Any:
        return self.complete_workflow(answer=message.text)


class Answerer(Workflow[AnswererState]):
    def configure_workflow(self, mapper: WorkflowMapper[AnswererState]) -> None:
        mapper.with_state(AnswererState).started_by(Request, self.requested)

    async def requested(self, message: Request, state: AnswererState, _: MessageAttributes) -> Any:
        await self.reply_to_originator(state, Answer(text=f"re: {message.question}"))
        return self.complete_workflow()


async def test_a_reply_reaches_the_workflow_whose_message_started_the_replier() -> None:
    bus = Bus.configure().with_workflow(Asker).with_workflow(Answerer).build()
    async with bus:
        await bus.send(Ask(question="patient"))
        await bus.wait_until_idle(timeout=5)

    [asker] = await bus.find_workflows(AskerState, "answer", "re: patient")
    assert asker.workflow_status is WorkflowStatus.COMPLETE
    assert bus.metrics.unmatched == 0


async def test_a_reply_that_finds_no_running_workflow_is_a_warning_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = Bus.configure().with_workflow(Asker).with_workflow(Answerer).build()
    with caplog.at_level(logging.INFO, logger="busflow"):
        async with bus:
            await bus.send(Ask(question="impatient"))
            await bus.wait_until_idle(timeout=5)

    assert (bus.metrics.unmatched, bus.metrics.replies_unmatched) == (1, 1)
    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert "Asker.answered" in warning.getMessage()
    assert "another workflow sent it" in warning.getMessage()


async def test_an_unmatched_message_from_outside_is_not_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = Bus.configure().with_workflow(Asker).with_workflow(Answerer).build()
    with caplog.at_level(logging.INFO, logger="busflow"):
        async with bus:
            await bus.send(
                Answer(text="stray"), MessageAttributes(sticky_attributes={"workflow_id": "gone"})
            )
            await bus.wait_until_idle(timeout=5)

    assert (bus.metrics.unmatched, bus.metrics.replies_unmatched) == (1, 0)
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


async def test_replying_with_no_one_to_reply_to_dead_letters_the_message_at_once() -> None:
    bus = Bus.configure().with_workflow(Answerer).build()
    async with bus:
        await bus.send(Request(question="from outside"))
        await bus.wait_until_idle(timeout=5)

    [dead] = bus.dead_letters
    assert dead.error_type == "busflow.BusError"
    assert "no workflow's message started it" in dead.error_text
    assert dead.attempts == 1


# failures, retries and dead letters


async def test_a_failing_handler_is_retried_until_it_succeeds() -> None:
    calls: list[int] = []

    async def flaky(message: Ping, _a: MessageAttributes) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("not yet")

    bus = Bus.configure().with_handler(Ping, flaky).with_retry_policy(FAST_RETRIES).build()
    async with bus:
        await bus.send(Ping(key="k"))
        await bus.wait_until_idle(timeout=5)

    assert len(calls) == 3
    assert bus.dead_letters == []


async def test_a_message_that_keeps_failing_is_dead_lettered_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(message: Ping, _a: MessageAttributes) -> None:
        raise RuntimeError("the payment provider is down")

    bus = Bus.configure().with_handler(Ping, broken).build()  # the default retry policy
    attributes = MessageAttributes(correlation_id="c-1")
    with caplog.at_level(logging.ERROR, logger="busflow"):
        async with bus:
            await bus.send(Ping(key="k"), attributes)
            await bus.wait_until_idle(timeout=5)  # the defaults give up within a few seconds

    [dead] = bus.dead_letters
    assert dead.message.name == Ping.message_name
    assert Ping.model_validate_json(dead.message.body) == Ping(key="k")
    assert dead.message.correlation_id == "c-1"
    assert dead.error_type == "builtins.RuntimeError"
    assert dead.error_text == "the payment provider is down"
    assert 'raise RuntimeError("the payment provider is down")' in dead.traceback
    assert dead.attempts == RetryPolicy().max_attempts
    assert "broken" in dead.handler
    assert any("dead-lettered" in record.getMessage() for record in caplog.records)


# lifecycle


async def test_wait_until_idle_raises_timeout_while_busy() -> None:
    release = asyncio.Event()

    async def slow(message: Ping, _a: MessageAttributes) -> None:
        await release.wait()

    bus = Bus.configure().with_handler(Ping, slow).build()
    async with bus:
        await bus.send(Ping(key="k"))
        with pytest.raises(TimeoutError):
            await bus.wait_until_idle(timeout=0.05)
        release.set()
        await bus.wait_until_idle(timeout=5)


class DisposablePersistence(InMemoryPersistence):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    async def initialize(self) -> None:
        self.events.append("initialize")

    async def dispose(self) -> None:
        self.events.append("dispose")


async def test_dispose_finishes_in_flight_handlers_and_reports_queued_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = asyncio.Event()
    finished: list[str] = []

    async def slow(message: Ping, _a: MessageAttributes) -> None:
        started.set()
        await asyncio.sleep(0.05)
        finished.append(message.key)

    persistence = DisposablePersistence()
    bus = Bus.configure().with_persistence(persistence).with_handler(Ping, slow).build()
    await bus.start()
    for n in range(4):
        await bus.send(Ping(key=f"k{n}"))
    await started.wait()
    with caplog.at_level(logging.WARNING, logger="busflow"):
        await bus.dispose()

    assert finished == ["k0"]
    assert any("3 message(s)" in record.getMessage() for record in caplog.records)
    assert persistence.events == ["initialize", "dispose"]
    with pytest.raises(BusNotRunningError):
        await bus.send(Ping(key="late"))


async def test_a_mapping_to_a_missing_field_fails_startup_naming_both() -> None:
    class BadWorkflow(Workflow[PaymentState]):
        def configure_workflow(self, mapper: WorkflowMapper[PaymentState]) -> None:
            mapper.with_state(PaymentState).started_by(PaymentRequested, self.handle).when(
                PaymentTaken,
                self.handle,
                MessageWorkflowMapping(lambda m, _a: m.order_id, "orderId"),
            )

        async def handle(
            self, message: Message, state: PaymentState, _a: MessageAttributes
        ) -> None:
            return None

    bus = Bus.configure().with_workflow(BadWorkflow).build()
    with pytest.raises(ConfigurationError, match=r"BadWorkflow.*'orderId'"):
        await bus.initialize()


async def test_a_workflow_without_a_start_or_state_fails_startup() -> None:
    class NoStart(Workflow[PaymentState]):
        def configure_workflow(self, mapper: WorkflowMapper[PaymentState]) -> None:
            mapper.with_state(PaymentState)

    class Unnamed(WorkflowState):
        pass

    class NoName(Workflow[Any]):
        def configure_workflow(self, mapper: WorkflowMapper[Any]) -> None:
            mapper.with_state(Unnamed)

    with pytest.raises(ConfigurationError, match="never started"):
        await Bus.configure().with_workflow(NoStart).build().initialize()
    with pytest.raises(ConfigurationError, match="workflow_name"):
        await Bus.configure().with_workflow(NoName).build().initialize()


async def test_two_state_types_may_not_share_a_name() -> None:
    class Twin(WorkflowState):
        workflow_name = CartState.workflow_name

    class TwinWorkflow(Workflow[Twin]):
        def configure_workflow(self, mapper: WorkflowMapper[Twin]) -> None:
            mapper.with_state(Twin).started_by(OrderPlaced, self.start)

        async def start(self, message: OrderPlaced, state: Twin, _a: MessageAttributes) -> None:
            return None

    bus = Bus.configure().with_workflow(CartWorkflow).with_workflow(TwinWorkflow).build()
    with pytest.raises(ConfigurationError, match="scenario/cart"):
        await bus.initialize()


async def test_waiting_on_a_bus_that_was_never_started_fails_fast() -> None:
    bus = Bus.configure().with_workflow(CartWorkflow).build()
    await bus.publish(OrderPlaced(order_id="o-1"))
    with pytest.raises(BusError, match="start"):
        await bus.wait_until_idle(timeout=1)
    await bus.start()
    await bus.wait_until_idle(timeout=5)
    await bus.dispose()
    assert len(await find(bus, CartState, "order_id", "o-1")) == 1
    assert BY_ORDER.maps_to == "order_id"


# failures at the edges


async def test_a_handler_whose_own_await_was_cancelled_is_retried_not_fatal() -> None:
    calls: list[int] = []

    async def flaky(message: Ping, _a: MessageAttributes) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise asyncio.CancelledError  # e.g. it awaited a task someone else cancelled

    bus = Bus.configure().with_handler(Ping, flaky).with_retry_policy(FAST_RETRIES).build()
    async with bus:
        await bus.send(Ping(key="k"))
        await bus.wait_until_idle(timeout=5)
        await bus.send(Ping(key="again"))
        await bus.wait_until_idle(timeout=5)

    assert len(calls) == 3
    assert bus.dead_letters == []


async def test_waiting_for_idle_returns_once_dispose_gave_up_queued_messages() -> None:
    release = asyncio.Event()

    async def slow(message: Ping, _a: MessageAttributes) -> None:
        await release.wait()

    bus = Bus.configure().with_handler(Ping, slow).with_dispose_timeout(0.05).build()
    await bus.start()
    for n in range(3):
        await bus.send(Ping(key=f"k{n}"))
    waiter = asyncio.create_task(bus.wait_until_idle())
    await bus.dispose()

    await asyncio.wait_for(waiter, timeout=5)


async def test_a_message_sent_to_another_bus_from_a_handler_goes_to_that_bus() -> None:
    received_on_b: list[Pong] = []

    async def on_pong(message: Pong, _a: MessageAttributes) -> None:
        received_on_b.append(message)

    bus_b = Bus.configure().with_handler(Pong, on_pong).build()

    async def forward(message: Ping, _a: MessageAttributes) -> None:
        await bus_b.send(Pong(key=message.key))

    bus_a = Bus.configure().with_handler(Ping, forward).build()
    async with bus_a, bus_b:
        await bus_a.send(Ping(key="k"))
        await bus_a.wait_until_idle(timeout=5)
        await bus_b.wait_until_idle(timeout=5)

    assert received_on_b == [Pong(key="k")]
    assert bus_a.dead_letters == []


class Audited(Message):
    order_id: str
    step: int


class AuditedState(WorkflowState):
    workflow_name = "test/audited"

    order_id: str = ""
    steps: list[int] = Field(default_factory=list)


class AuditedWorkflow(Workflow[AuditedState]):
    def configure_workflow(self, mapper: WorkflowMapper[AuditedState]) -> None:
        mapper.with_state(AuditedState).started_by(StartGroup, self.start).when(
            Audited, self.step, MessageWorkflowMapping(lambda m, _a: m.order_id, "order_id")
        )

    async def start(
        self, message: StartGroup, _s: AuditedState, _a: MessageAttributes
    ) -> dict[str, Any]:
        return {"order_id": message.group}

    async def step(
        self, message: Audited, state: AuditedState, _a: MessageAttributes
    ) -> dict[str, Any]:
        return {"steps": [*state.steps, message.step]}


async def test_arrival_order_holds_when_another_handler_of_the_message_awaits() -> None:
    delays = {1: 0.03, 2: 0.0, 3: 0.0}

    async def audit(message: Audited, _a: MessageAttributes) -> None:
        await asyncio.sleep(delays[message.step])

    bus = (
        Bus.configure()
        .with_handler(Audited, audit)
        .with_workflow(AuditedWorkflow)
        .with_concurrency(3)
        .build()
    )
    async with bus:
        await bus.send(StartGroup(group="o-1", name="x"))
        await bus.wait_until_idle(timeout=5)
        for step in (1, 2, 3):
            await bus.send(Audited(order_id="o-1", step=step))
        await bus.wait_until_idle(timeout=5)

    [state] = await find(bus, AuditedState, "order_id", "o-1")
    assert state.steps == [1, 2, 3]


async def test_a_lookup_that_raises_does_not_keep_the_message_from_other_handlers() -> None:
    plain_calls: list[Audited] = []

    async def audit(message: Audited, _a: MessageAttributes) -> None:
        plain_calls.append(message)

    def broken_lookup(message: Audited, _a: MessageAttributes) -> str:
        raise KeyError("order_id")

    class BrokenLookup(AuditedWorkflow):
        def configure_workflow(self, mapper: WorkflowMapper[AuditedState]) -> None:
            mapper.with_state(AuditedState).started_by(StartGroup, self.start).when(
                Audited, self.step, MessageWorkflowMapping(broken_lookup, "order_id")
            )

    bus = (
        Bus.configure()
        .with_workflow(BrokenLookup)
        .with_handler(Audited, audit)
        .with_retry_policy(FAST_RETRIES)
        .build()
    )
    async with bus:
        await bus.send(Audited(order_id="o-1", step=1))
        await bus.wait_until_idle(timeout=5)

    assert plain_calls == [Audited(order_id="o-1", step=1)]
    [dead] = bus.dead_letters
    assert dead.error_type == "builtins.KeyError"
    assert bus.metrics.unmatched == 0


async def test_a_stored_state_that_no_longer_fits_is_dead_lettered_without_retries() -> None:
    class BrokenStore(InMemoryPersistence):
        async def get_workflow_state(self, *args: Any, **kwargs: Any) -> list[Any]:
            raise StoredStateError(
                "test/audited: wf-1 does not fit", collection="c", workflow_id="wf-1"
            )

    bus = Bus.configure().with_persistence(BrokenStore()).with_workflow(AuditedWorkflow).build()
    async with bus:
        await bus.send(Audited(order_id="o-1", step=1))
        await bus.wait_until_idle(timeout=5)

    [dead] = bus.dead_letters
    assert dead.error_type == "busflow.StoredStateError"
    assert dead.attempts == 1


async def test_waiting_for_idle_inside_a_handler_is_refused() -> None:
    async def impatient(message: Ping, _a: MessageAttributes) -> None:
        await bus.wait_until_idle(timeout=1)

    bus = Bus.configure().with_handler(Ping, impatient).with_retry_policy(FAST_RETRIES).build()
    async with bus:
        await bus.send(Ping(key="k"))
        await bus.wait_until_idle(timeout=5)

    [dead] = bus.dead_letters
    assert dead.error_type == "busflow.BusError"


async def test_configuration_mistakes_fail_at_startup() -> None:
    class Required(WorkflowState):
        workflow_name = "test/required"

        order_id: str  # no default: a new workflow cannot be made

    class RequiredWorkflow(Workflow[Required]):
        def configure_workflow(self, mapper: WorkflowMapper[Required]) -> None:
            mapper.with_state(Required).started_by(StartGroup, self.start)

        async def start(self, message: StartGroup, state: Required, _a: MessageAttributes) -> None:
            return None

    with pytest.raises(ConfigurationError, match=r"\['order_id'\].*defaults"):
        await Bus.configure().with_workflow(RequiredWorkflow).build().initialize()
    with pytest.raises(ConfigurationError, match="more than one"):
        await (
            Bus.configure()
            .with_workflow(CartWorkflow)
            .with_workflow(CartWorkflow)
            .build()
            .initialize()
        )

    def not_async(message: Ping, _a: MessageAttributes) -> None:
        return None

    with pytest.raises(ConfigurationError, match="async"):
        Bus.configure().with_handler(Ping, not_async)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="negative"):
        Bus.configure().with_dispose_timeout(-1)


# defects of the bus before the transport seam, each pinned


class FailingOnce(InMemoryPersistence):
    """Fails ``initialize_workflow`` the first time, as a database that is not up yet."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False
        self.disposed = 0

    async def initialize_workflow(self, state_type: Any, mappings: Any) -> None:
        if not self.failed:
            self.failed = True
            raise ConnectionError("not up yet")
        await super().initialize_workflow(state_type, mappings)

    async def dispose(self) -> None:
        self.disposed += 1


async def test_a_second_initialize_after_a_failed_one_registers_handlers_once() -> None:
    calls: list[str] = []

    async def on_ping(message: Ping, _a: MessageAttributes) -> None:
        calls.append(message.key)

    bus = (
        Bus.configure()
        .with_persistence(FailingOnce())
        .with_workflow(CartWorkflow)
        .with_handler(Ping, on_ping)
        .build()
    )
    with pytest.raises(ConnectionError):
        await bus.initialize()
    await bus.initialize()
    async with bus:
        await bus.send(Ping(key="k"))
        await bus.wait_until_idle(timeout=5)
    assert calls == ["k"]


async def test_a_failed_start_in_async_with_disposes_the_persistence() -> None:
    persistence = FailingOnce()
    bus = Bus.configure().with_persistence(persistence).with_workflow(CartWorkflow).build()
    with pytest.raises(ConnectionError):
        async with bus:
            pass
    assert persistence.disposed == 1


class StallingClose(InMemoryPersistence):
    async def dispose(self) -> None:
        await asyncio.sleep(30)  # a client closing during a server stall


async def test_dispose_returns_in_time_when_the_persistence_stalls_closing() -> None:
    bus = Bus.configure().with_persistence(StallingClose()).with_dispose_timeout(0.1).build()
    await bus.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await bus.dispose()
    assert loop.time() - started < 0.1 + 1.5


async def test_a_workflow_on_two_buses_sends_through_the_bus_that_runs_it() -> None:
    sent: dict[str, list[MessageAttributes]] = {"a": [], "b": []}

    def recorder(name: str) -> Any:
        async def on_pong(message: Pong, attributes: MessageAttributes) -> None:
            sent[name].append(attributes)

        return on_pong

    workflow = ConflictingSender()
    workflow.conflict_next = False
    bus_a = Bus.configure().with_workflow(workflow).with_handler(Pong, recorder("a")).build()
    bus_b = Bus.configure().with_workflow(workflow).with_handler(Pong, recorder("b")).build()
    async with bus_a, bus_b:  # b is registered last
        await bus_a.send(StartGroup(group="k", name="x"))
        await bus_a.wait_until_idle(timeout=5)
        [state] = await find_states(bus_a.persistence, ConflictingSenderState, "key", "k")
        await bus_a.send(Ping(key="k"))
        await bus_a.wait_until_idle(timeout=5)
    assert sent["b"] == []
    [attributes] = sent["a"]
    assert attributes.sticky_attributes["workflow_id"] == state.workflow_id


async def test_dead_letters_are_bounded_and_hold_no_live_exception() -> None:
    async def broken(message: Ping, _a: MessageAttributes) -> None:
        raise StoredStateError("does not fit", collection="c", workflow_id="w")

    transport = MemoryTransport(dead_letter_limit=3)
    bus = Bus.configure().with_transport(transport).with_handler(Ping, broken).build()
    async with bus:
        for n in range(5):
            await bus.send(Ping(key=f"k{n}"))
        await bus.wait_until_idle(timeout=5)
    kept = bus.dead_letters
    assert [Ping.model_validate_json(dead.message.body).key for dead in kept] == ["k2", "k3", "k4"]
    assert bus.metrics.dead_letters == 5
    for dead in kept:
        for value in vars(dead).values():
            assert not isinstance(value, BaseException)
        assert "StoredStateError: does not fit" in dead.traceback


# delayed messages


class NoTimeouts:
    """A persistence that stores workflow state only: no TimeoutStore."""

    def __init__(self) -> None:
        self._inner = InMemoryPersistence()

    def prepare(self, core_dependencies: Any) -> None:
        self._inner.prepare(core_dependencies)

    async def initialize_workflow(self, state_type: Any, mappings: Any) -> None:
        await self._inner.initialize_workflow(state_type, mappings)

    async def get_workflow_state(self, *arguments: Any) -> Any:
        return await self._inner.get_workflow_state(*arguments)

    async def save_workflow_state(self, state: Any) -> None:
        await self._inner.save_workflow_state(state)


async def test_a_delayed_send_needs_a_persistence_that_stores_messages_for_later() -> None:
    bus = Bus.configure().with_persistence(NoTimeouts()).with_handler(Ping, noop).build()
    async with bus:
        with pytest.raises(ConfigurationError, match="NoTimeouts stores no messages for later"):
            await bus.send(Ping(key="k"), deliver_after=timedelta(seconds=1))
        with pytest.raises(ConfigurationError, match="timezone-aware"):
            await Bus.configure().build().send(Ping(key="k"), deliver_at=datetime(2030, 1, 1))


async def noop(message: Any, _a: MessageAttributes) -> None:
    return None


class RemindState(WorkflowState):
    workflow_name = "test/remind"

    key: str = ""
    reminded: int = 0
    reminder_from_version: int = -1


class Remind(Message):
    key: str


class Reminder(Message):
    key: str
    asked_at_version: int


class Arm(Message):
    key: str


class RemindWorkflow(Workflow[RemindState]):
    """Arm asks for a Reminder in 0.2 s; the first save of that run loses a race."""

    def __init__(self) -> None:
        self.persistence: Persistence | None = None
        self.conflict_next = True

    def configure_workflow(self, mapper: WorkflowMapper[RemindState]) -> None:
        mapper.with_state(RemindState).started_by(Remind, self.remind).when(
            Reminder, self.reminder
        ).when(Arm, self.arm, MessageWorkflowMapping(lambda m, _a: m.key, "key"))

    async def remind(self, message: Remind, state: RemindState, _a: MessageAttributes) -> Any:
        return {"key": message.key}

    async def arm(self, message: Arm, state: RemindState, _a: MessageAttributes) -> Any:
        reminder = Reminder(key=message.key, asked_at_version=state.workflow_version)
        await self.request_timeout(reminder, after=timedelta(seconds=0.2))
        if self.conflict_next:
            self.conflict_next = False
            assert self.persistence is not None
            await self.persistence.save_workflow_state(state)  # the save below will conflict
        return {"reminded": state.reminded}

    async def reminder(self, message: Reminder, state: RemindState, _a: MessageAttributes) -> Any:
        return {"reminded": state.reminded + 1, "reminder_from_version": message.asked_at_version}


async def test_a_timeout_is_stored_only_when_the_handlers_save_succeeds() -> None:
    persistence = InMemoryPersistence()
    workflow = RemindWorkflow()
    workflow.persistence = persistence
    bus = (
        Bus.configure()
        .with_persistence(persistence)
        .with_workflow(workflow)
        .with_timeout_polling(interval=0.05, max_interval=0.1)
        .build()
    )
    async with bus:
        await bus.send(Remind(key="k"))
        await bus.wait_until_idle(timeout=5)
        await bus.send(Arm(key="k"))
        await bus.wait_until_idle(timeout=5)
        await asyncio.sleep(0.6)
        await bus.wait_until_idle(timeout=5)
    [state] = await find(bus, RemindState, "key", "k")

    assert bus.metrics.conflicts == 1, "the first run lost its save"
    assert state.reminded == 1
    assert state.reminder_from_version == 2, "the run that lost its save stored no timeout"


class ElsewhereTransport:
    """A transport that keeps its dead letters outside this process, as a broker does."""

    def __init__(self) -> None:
        self._inner = MemoryTransport()

    async def start(self, subscription: Any) -> None:
        await self._inner.start(subscription)

    async def close(self) -> None:
        await self._inner.close()

    async def send(self, message: Any) -> None:
        await self._inner.send(message)

    async def publish(self, message: Any) -> None:
        await self._inner.publish(message)

    async def receive(self) -> Any:
        return await self._inner.receive()

    async def complete(self, delivery: Any) -> None:
        await self._inner.complete(delivery)

    async def retry(self, delivery: Any, message: Any, delay: float) -> None:
        await self._inner.retry(delivery, message, delay)

    async def dead_letter(self, delivery: Any, dead_letter: Any) -> None:
        await self._inner.dead_letter(delivery, dead_letter)


async def test_dead_letters_kept_elsewhere_say_where_to_read_them() -> None:
    bus = Bus.configure().with_transport(ElsewhereTransport()).build()

    with pytest.raises(BusError, match="ElsewhereTransport keeps dead letters outside"):
        _ = bus.dead_letters
