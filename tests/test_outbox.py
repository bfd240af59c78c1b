"""The outbox kept in a workflow's state: what is carried over, rescued and cleared."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from busflow import (
    Bus,
    InMemoryPersistence,
    MemoryTransport,
    Message,
    MessageAttributes,
    MessageWorkflowMapping,
    OutboxMessage,
    TransportMessage,
    Workflow,
    WorkflowMapper,
    WorkflowState,
)


class Begin(Message):
    key: str


class Nudge(Message):
    key: str


class Notice(Message):
    partition_by = "key"
    key: str
    text: str


class NoticeState(WorkflowState):
    workflow_name = "test/notice"

    key: str = ""
    nudges: int = 0


BY_KEY: MessageWorkflowMapping[Any, NoticeState] = MessageWorkflowMapping(
    lambda message, _attributes: message.key, "key"
)


class NoticeWorkflow(Workflow[NoticeState]):
    """Each Nudge counts, and sends a Notice."""

    def configure_workflow(self, mapper: WorkflowMapper[NoticeState]) -> None:
        mapper.with_state(NoticeState).started_by(Begin, self.begin).when(Nudge, self.nudge, BY_KEY)

    async def begin(self, message: Begin, state: NoticeState, _a: MessageAttributes) -> Any:
        return {"key": message.key}

    async def nudge(self, message: Nudge, state: NoticeState, _a: MessageAttributes) -> Any:
        await self.bus.send(Notice(key=state.key, text=f"nudge {state.nudges + 1}"))
        return {"nudges": state.nudges + 1}


def notice_bus(
    persistence: InMemoryPersistence,
    notices: list[str],
    transport: MemoryTransport | None = None,
) -> Bus:
    async def on_notice(message: Notice, attributes: MessageAttributes) -> None:
        notices.append(message.text)

    return (
        Bus.configure()
        .with_persistence(persistence)
        .with_transport(transport or MemoryTransport())
        .with_workflow(NoticeWorkflow)
        .with_handler(Notice, on_notice)
        .build()
    )


class SentMessages(MemoryTransport):
    """The memory transport, keeping each message it is handed to send."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[TransportMessage] = []

    async def send(self, message: TransportMessage) -> None:
        self.sent.append(message)
        await super().send(message)


async def stored(persistence: InMemoryPersistence, key: str) -> NoticeState:
    [state] = await persistence.get_workflow_state(
        NoticeState, BY_KEY, Nudge(key=key), MessageAttributes(), True
    )
    return state


def foreign_notice(text: str, saved_at: datetime) -> OutboxMessage:
    """A Notice that another bus saved in this workflow's outbox."""
    return OutboxMessage(
        message_id=f"foreign-{text}",
        name=Notice.message_name,
        body=Notice(key="k", text=text).model_dump_json(),
        origin="elsewhere",
        saved_at=saved_at,
    )


async def plant(persistence: InMemoryPersistence, *records: OutboxMessage) -> None:
    state = await stored(persistence, "k")
    state.workflow_outbox = list(records)
    await persistence.save_workflow_state(state)


async def test_a_quiet_workflow_has_its_dispatched_outbox_cleared() -> None:
    persistence = InMemoryPersistence()
    notices: list[str] = []
    async with notice_bus(persistence, notices) as bus:
        await bus.send(Begin(key="k"))
        await bus.wait_until_idle(timeout=5)
        await bus.send(Nudge(key="k"))
        await bus.wait_until_idle(timeout=5)
        saved = await stored(persistence, "k")
        for _ in range(50):  # cleared about half a second after the dispatch
            await asyncio.sleep(0.05)
            if not (await stored(persistence, "k")).workflow_outbox:
                break
        cleared = await stored(persistence, "k")

    assert notices == ["nudge 1"]
    assert [record.name for record in saved.workflow_outbox] == [Notice.message_name]
    assert cleared.workflow_outbox == []
    assert cleared.workflow_version == saved.workflow_version


async def test_the_next_save_by_the_same_bus_drops_what_it_dispatched() -> None:
    persistence = InMemoryPersistence()
    notices: list[str] = []
    async with notice_bus(persistence, notices) as bus:
        await bus.send(Begin(key="k"))
        for _ in range(3):
            await bus.send(Nudge(key="k"))
        await bus.wait_until_idle(timeout=5)
        state = await stored(persistence, "k")

    assert notices == ["nudge 1", "nudge 2", "nudge 3"]
    assert [record.body for record in state.workflow_outbox] == [
        Notice(key="k", text="nudge 3").model_dump_json()
    ]


async def test_another_buses_fresh_messages_are_carried_over_not_sent_again() -> None:
    persistence = InMemoryPersistence()
    notices: list[str] = []
    async with notice_bus(persistence, notices) as bus:
        await bus.send(Begin(key="k"))
        await bus.wait_until_idle(timeout=5)
        fresh = foreign_notice("in flight elsewhere", datetime.now(UTC))
        await plant(persistence, fresh)
        await bus.send(Nudge(key="k"))
        await bus.wait_until_idle(timeout=5)
        state = await stored(persistence, "k")

    assert notices == ["nudge 1"], "the other bus is still dispatching its own message"
    assert fresh.message_id in [record.message_id for record in state.workflow_outbox]


async def test_messages_a_dead_bus_left_behind_are_rescued_and_dropped() -> None:
    persistence = InMemoryPersistence()
    notices: list[str] = []
    async with notice_bus(persistence, notices) as bus:
        await bus.send(Begin(key="k"))
        await bus.wait_until_idle(timeout=5)
        abandoned = foreign_notice("left behind", datetime.now(UTC) - timedelta(minutes=5))
        await plant(persistence, abandoned)
        await bus.send(Nudge(key="k"))
        await bus.wait_until_idle(timeout=5)
        state = await stored(persistence, "k")

    assert notices == ["left behind", "nudge 1"]
    assert abandoned.message_id not in [record.message_id for record in state.workflow_outbox]


async def test_a_partition_key_travels_with_a_sent_message_and_with_a_rescued_one() -> None:
    persistence = InMemoryPersistence()
    notices: list[str] = []
    transport = SentMessages()
    async with notice_bus(persistence, notices, transport) as bus:
        await bus.send(Begin(key="k"))
        await bus.wait_until_idle(timeout=5)
        abandoned = foreign_notice("left behind", datetime.now(UTC) - timedelta(minutes=5))
        await plant(persistence, abandoned.model_copy(update={"partition_key": "k"}))
        await bus.send(Nudge(key="k"))
        await bus.wait_until_idle(timeout=5)

    assert notices == ["left behind", "nudge 1"]
    keys = {
        message.message_id == abandoned.message_id: message.partition_key
        for message in transport.sent
        if message.name == Notice.message_name
    }
    assert keys == {True: "k", False: "k"}
    assert [
        message.partition_key for message in transport.sent if message.name != Notice.message_name
    ] == [None, None]
