"""The bus contract suite behind ``busflow.testing``: what a bus does on any transport."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from pydantic import Field

from busflow import (
    Bus,
    DeadLetter,
    InMemoryPersistence,
    Message,
    MessageAttributes,
    MessageWorkflowMapping,
    RetryPolicy,
    Transport,
    TransportMessage,
    Workflow,
    WorkflowMapper,
    WorkflowState,
)

__all__ = ["BusContract"]

FAST = RetryPolicy(max_attempts=5, base_delay=0.001, max_delay=0.01)
DISPOSE_MARGIN = 1.5
"""What ``Bus.dispose`` may take beyond its timeout: ``CANCEL_GRACE + CLOSE_GRACE``."""


class Opened(Message):
    message_name = "busflow-contract.Opened"
    partition_by = "account"
    account: str


class Deposited(Message):
    message_name = "busflow-contract.Deposited"
    partition_by = "account"
    account: str
    seq: int


class Noted(Message):
    """Reaches its account by the sticky ``workflow_id``, not by the account number."""

    message_name = "busflow-contract.Noted"
    seq: int


class Check(Message):
    message_name = "busflow-contract.Check"
    partition_by = "account"
    account: str


class Checked(Message):
    message_name = "busflow-contract.Checked"
    ok: bool


class Close(Message):
    message_name = "busflow-contract.Close"
    partition_by = "account"
    account: str


class Job(Message):
    message_name = "busflow-contract.Job"
    partition_by = "key"
    key: str


class AccountState(WorkflowState):
    workflow_name = "busflow-contract/account"

    account: str = ""
    seen: list[int] = Field(default_factory=list)
    checked: bool = False


BY_ACCOUNT: MessageWorkflowMapping[Any, AccountState] = MessageWorkflowMapping(
    lambda message, _attributes: message.account, "account"
)


class AccountWorkflow(Workflow[AccountState]):
    """Opened starts it; Deposited (by account) and Noted (by sticky id) append their seq;
    Check asks a plain handler, whose Checked reply finds it by the sticky id; Close ends it."""

    def __init__(self) -> None:
        self.before_save: Callable[[AccountState], Awaitable[None]] | None = None
        """Run by ``check`` after it sent its Job, before its state is saved."""
        self.on_deposit: Callable[[Deposited], Awaitable[None]] | None = None
        """Run by ``deposited`` before it changes the state."""
        self.close_result: Any = None
        """What ``close`` returns instead of completing the workflow, when set."""
        self.closes = 0

    def configure_workflow(self, mapper: WorkflowMapper[AccountState]) -> None:
        (
            mapper.with_state(AccountState)
            .started_by(Opened, self.opened)
            .when(Deposited, self.deposited, BY_ACCOUNT)
            .when(Noted, self.noted)
            .when(Check, self.check, BY_ACCOUNT)
            .when(Checked, self.checked)
            .when(Close, self.close, BY_ACCOUNT)
        )

    async def opened(
        self, message: Opened, state: AccountState, _a: MessageAttributes
    ) -> dict[str, Any]:
        return {"account": message.account}

    async def deposited(
        self, message: Deposited, state: AccountState, _a: MessageAttributes
    ) -> dict[str, Any]:
        if self.on_deposit is not None:
            await self.on_deposit(message)
        await asyncio.sleep(0)
        return {"seen": [*state.seen, message.seq]}

    async def noted(
        self, message: Noted, state: AccountState, _a: MessageAttributes
    ) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"seen": [*state.seen, message.seq]}

    async def check(
        self, message: Check, state: AccountState, _a: MessageAttributes
    ) -> dict[str, Any]:
        await self.bus.send(Job(key=state.account))
        if self.before_save is not None:
            await self.before_save(state)
        return {"checked": False}

    async def checked(
        self, message: Checked, state: AccountState, _a: MessageAttributes
    ) -> dict[str, Any]:
        return {"checked": message.ok}

    async def close(self, message: Close, state: AccountState, _a: MessageAttributes) -> Any:
        self.closes += 1
        if self.close_result is not None:
            return self.close_result
        return self.complete_workflow()


class BusContract:
    """Tests that every transport must pass, on ``InMemoryPersistence``.

    Subclass it in a test module (name the subclass ``Test...``) and override the
    ``transport`` fixture to yield a fresh transport with an empty queue of its own. A
    transport that keeps dead letters outside ``dead_letters`` overrides ``dead_letters_of``.
    """

    @pytest.fixture
    def transport(self) -> Transport:
        raise NotImplementedError("override the transport fixture")

    async def dead_letters_of(self, transport: Transport) -> list[DeadLetter]:
        kept: list[DeadLetter] = transport.dead_letters  # type: ignore[attr-defined]
        return list(kept)

    @staticmethod
    def bus_on(
        transport: Transport,
        *,
        workflow: AccountWorkflow | None = None,
        handlers: Sequence[tuple[type[Message], Any]] = (),
        concurrency: int = 4,
        policy: RetryPolicy = FAST,
        ordered: bool = True,
        dispose_timeout: float = 5.0,
        persistence: InMemoryPersistence | None = None,
    ) -> Bus:
        configuration = (
            Bus.configure()
            .with_transport(transport)
            .with_persistence(persistence or InMemoryPersistence())
            .with_workflow(workflow or AccountWorkflow())
            .with_concurrency(concurrency)
            .with_retry_policy(policy)
            .with_per_workflow_order(ordered)
            .with_dispose_timeout(dispose_timeout)
        )
        for message_type, handler in handlers:
            configuration.with_handler(message_type, handler)
        return configuration.build()

    @staticmethod
    async def account(bus: Bus, account: str) -> AccountState | None:
        found = await bus.persistence.get_workflow_state(
            AccountState, BY_ACCOUNT, Close(account=account), MessageAttributes(), True
        )
        return found[0] if found else None

    async def open_account(self, bus: Bus, account: str) -> AccountState:
        await bus.send(Opened(account=account))
        await bus.wait_until_idle(timeout=10)
        state = await self.account(bus, account)
        assert state is not None, f"account {account} was not opened"
        return state

    # a whole conversation

    async def test_a_workflow_runs_to_completion_and_replies_find_it(
        self, transport: Transport
    ) -> None:
        async def job(message: Job, attributes: MessageAttributes) -> None:
            await bus.send(Checked(ok=True))  # a reply: it keeps the sticky workflow_id

        bus = self.bus_on(transport, handlers=[(Job, job)])
        async with bus:
            opened = await self.open_account(bus, "a-1")
            await bus.send(Check(account="a-1"))
            await bus.wait_until_idle(timeout=10)
            await bus.send(Close(account="a-1"))
            await bus.wait_until_idle(timeout=10)
            state = await self.account(bus, "a-1")
        assert state is not None
        assert state.workflow_id == opened.workflow_id
        assert state.checked is True
        assert state.workflow_status == "complete"
        assert bus.metrics.unmatched == 0

    async def test_every_message_has_an_id_that_handlers_see(self, transport: Transport) -> None:
        ids: list[str | None] = []

        async def job(message: Job, attributes: MessageAttributes) -> None:
            ids.append(attributes.message_id)

        bus = self.bus_on(transport, handlers=[(Job, job)])
        async with bus:
            await bus.send(Job(key="given"), MessageAttributes(message_id="id-given"))
            await bus.send(Job(key="made"))
            await bus.wait_until_idle(timeout=10)
        assert ids[0] == "id-given"
        assert isinstance(ids[1], str)
        assert ids[1] != "id-given"

    # ordering

    async def test_messages_for_one_workflow_run_in_arrival_order(
        self, transport: Transport
    ) -> None:
        bus = self.bus_on(transport, concurrency=8)
        async with bus:
            await self.open_account(bus, "a-1")
            for seq in range(60):
                await bus.send(Deposited(account="a-1", seq=seq))
            await bus.wait_until_idle(timeout=20)
            state = await self.account(bus, "a-1")
        assert state is not None
        assert state.seen == list(range(60))
        assert bus.metrics.conflicts == 0

    async def test_order_holds_per_workflow_whichever_mapping_finds_it(
        self, transport: Transport
    ) -> None:
        bus = self.bus_on(transport, concurrency=8)
        async with bus:
            opened = await self.open_account(bus, "a-1")
            sticky = MessageAttributes(sticky_attributes={"workflow_id": opened.workflow_id})
            for seq in range(60):
                if seq % 2:
                    await bus.send(Noted(seq=seq), sticky)
                else:
                    await bus.send(Deposited(account="a-1", seq=seq))
            await bus.wait_until_idle(timeout=20)
            state = await self.account(bus, "a-1")
        assert state is not None
        assert state.seen == list(range(60))
        assert bus.metrics.conflicts == 0

    # the outbox

    async def test_sent_messages_leave_only_after_the_save_and_once(
        self, transport: Transport
    ) -> None:
        jobs: list[str] = []
        persistence = InMemoryPersistence()
        workflow = AccountWorkflow()

        async def job(message: Job, attributes: MessageAttributes) -> None:
            jobs.append(message.key)

        async def conflict_once(state: AccountState) -> None:
            workflow.before_save = None
            await persistence.save_workflow_state(state)  # another writer wins the race

        bus = self.bus_on(
            transport, workflow=workflow, persistence=persistence, handlers=[(Job, job)]
        )
        async with bus:
            await self.open_account(bus, "a-1")
            workflow.before_save = conflict_once
            await bus.send(Check(account="a-1"))
            await bus.wait_until_idle(timeout=10)
        assert bus.metrics.conflicts == 1
        assert jobs == ["a-1"], "the run that lost the race must not have sent its Job"

    async def test_a_handler_that_fails_after_sending_sends_nothing_on_that_attempt(
        self, transport: Transport
    ) -> None:
        jobs: list[str] = []
        workflow = AccountWorkflow()

        async def job(message: Job, attributes: MessageAttributes) -> None:
            jobs.append(message.key)

        async def fail_once(state: AccountState) -> None:
            workflow.before_save = None
            raise RuntimeError("the database blinked")

        bus = self.bus_on(transport, workflow=workflow, handlers=[(Job, job)])
        async with bus:
            await self.open_account(bus, "a-1")
            workflow.before_save = fail_once
            await bus.send(Check(account="a-1"))
            await bus.wait_until_idle(timeout=10)
        assert jobs == ["a-1"]
        assert bus.metrics.retries == 1
        assert await self.dead_letters_of(transport) == []

    # retries

    async def test_a_failing_handler_is_redelivered_with_the_same_id(
        self, transport: Transport
    ) -> None:
        seen: list[str | None] = []

        async def flaky(message: Job, attributes: MessageAttributes) -> None:
            seen.append(attributes.message_id)
            if len(seen) < 3:
                raise ConnectionError("not yet")

        bus = self.bus_on(transport, handlers=[(Job, flaky)])
        async with bus:
            await bus.send(Job(key="k"))
            await bus.wait_until_idle(timeout=10)
        assert len(seen) == 3
        assert len(set(seen)) == 1
        assert bus.metrics.retries == 2
        assert await self.dead_letters_of(transport) == []

    async def test_a_message_waiting_for_its_retry_holds_no_worker_nor_its_turn(
        self, transport: Transport
    ) -> None:
        workflow = AccountWorkflow()
        calls: list[int] = []

        async def fail_first(message: Deposited) -> None:
            calls.append(message.seq)
            if calls == [0]:
                raise ConnectionError("not yet")

        workflow.on_deposit = fail_first
        slow = RetryPolicy(max_attempts=3, base_delay=0.3, max_delay=0.3)
        bus = self.bus_on(transport, workflow=workflow, concurrency=1, policy=slow)
        async with bus:
            await self.open_account(bus, "a-1")
            await bus.send(Deposited(account="a-1", seq=0))
            await bus.send(Deposited(account="a-1", seq=1))
            await bus.wait_until_idle(timeout=10)
            state = await self.account(bus, "a-1")
        assert calls == [0, 1, 0], "seq 1 runs, on the one worker, while seq 0 waits"
        assert state is not None
        assert state.seen == [1, 0]

    async def test_a_retry_skips_the_handlers_that_already_finished(
        self, transport: Transport
    ) -> None:
        steady: list[str] = []
        flaky_calls: list[str] = []

        async def steady_handler(message: Job, attributes: MessageAttributes) -> None:
            steady.append(message.key)

        async def flaky_handler(message: Job, attributes: MessageAttributes) -> None:
            flaky_calls.append(message.key)
            if len(flaky_calls) == 1:
                raise ConnectionError("not yet")

        bus = self.bus_on(transport, handlers=[(Job, steady_handler), (Job, flaky_handler)])
        async with bus:
            await bus.send(Job(key="k"))
            await bus.wait_until_idle(timeout=10)
        assert steady == ["k"]
        assert flaky_calls == ["k", "k"]

    async def test_contention_never_dead_letters_while_the_workflow_moves_on(
        self, transport: Transport
    ) -> None:
        once = RetryPolicy(max_attempts=1)
        bus = self.bus_on(transport, concurrency=8, ordered=False, policy=once)
        async with bus:
            await self.open_account(bus, "a-1")
            # Sent at once: one by one, a broker's confirm takes longer than the handling,
            # so each message would be handled before the next arrived, and none would race.
            await asyncio.gather(
                *(bus.send(Deposited(account="a-1", seq=seq)) for seq in range(80))
            )
            await bus.wait_until_idle(timeout=30)
            state = await self.account(bus, "a-1")
        assert state is not None
        assert sorted(state.seen) == list(range(80))
        assert bus.metrics.conflicts > 0, "unordered messages for one workflow must race"
        assert await self.dead_letters_of(transport) == []

    # dead letters

    async def test_a_message_that_keeps_failing_is_dead_lettered_as_plain_data(
        self, transport: Transport
    ) -> None:
        async def broken(message: Job, attributes: MessageAttributes) -> None:
            raise ConnectionError("the provider is down")

        bus = self.bus_on(transport, handlers=[(Job, broken)])
        async with bus:
            await bus.send(Job(key="k"), MessageAttributes(correlation_id="c-1"))
            await bus.wait_until_idle(timeout=10)
        [dead] = await self.dead_letters_of(transport)
        assert dead.message.name == Job.message_name
        assert Job.model_validate_json(dead.message.body) == Job(key="k")
        assert dead.message.correlation_id == "c-1"
        assert dead.error_type == "builtins.ConnectionError"
        assert dead.error_text == "the provider is down"
        assert "ConnectionError: the provider is down" in dead.traceback
        assert dead.attempts == FAST.max_attempts
        assert dead.handler.endswith("broken")

    async def test_an_error_that_can_only_recur_is_dead_lettered_at_once(
        self, transport: Transport
    ) -> None:
        workflow = AccountWorkflow()
        bus = self.bus_on(transport, workflow=workflow)
        async with bus:
            await self.open_account(bus, "a-1")
            for result in ({"no_such_field": 1}, {"seen": "not a list"}, "not a change"):
                workflow.close_result = result
                await bus.send(Close(account="a-1"))
                await bus.wait_until_idle(timeout=10)
        assert workflow.closes == 3, "a handler whose result can only be wrong runs once"
        dead = await self.dead_letters_of(transport)
        assert [letter.error_type for letter in dead] == ["busflow.HandlerResultError"] * 3
        assert [letter.attempts for letter in dead] == [1, 1, 1]
        assert "no_such_field" in dead[0].error_text
        assert "seen" in dead[1].error_text
        state = await self.account(bus, "a-1")
        assert state is not None
        assert state.workflow_status == "running"
        assert state.seen == []

    async def test_a_body_that_does_not_decode_is_dead_lettered_and_work_goes_on(
        self, transport: Transport
    ) -> None:
        jobs: list[str] = []

        async def job(message: Job, attributes: MessageAttributes) -> None:
            jobs.append(message.key)

        bus = self.bus_on(transport, handlers=[(Job, job)])
        async with bus:
            await transport.send(
                TransportMessage(name=Job.message_name, message_id="poison", body=b"{not json")
            )
            await bus.send(Job(key="after"))
            deadline = time.monotonic() + 10
            while not (jobs and await self.dead_letters_of(transport)):
                assert time.monotonic() < deadline, "the poison message stalled the consumer"
                await asyncio.sleep(0.01)
        [dead] = await self.dead_letters_of(transport)
        assert jobs == ["after"]
        assert dead.message.message_id == "poison"
        assert dead.error_type == "busflow.MessageDecodeError"
        assert dead.attempts == 1

    # dispose

    async def test_dispose_returns_in_time_while_a_hot_workflow_has_a_backlog(
        self, transport: Transport
    ) -> None:
        bus = self.bus_on(transport, concurrency=2, dispose_timeout=0.2)
        await bus.start()
        await self.open_account(bus, "a-1")
        for seq in range(2000):
            await bus.send(Deposited(account="a-1", seq=seq))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await bus.dispose()
        took = time.monotonic() - started
        await bus.wait_until_idle(timeout=1)  # returns at once on a disposed bus
        assert took < 0.2 + DISPOSE_MARGIN, f"dispose took {took:.2f} s"

    async def test_dispose_returns_in_time_when_a_handler_swallows_cancellation(
        self, transport: Transport
    ) -> None:
        started = asyncio.Event()

        async def stubborn(message: Job, attributes: MessageAttributes) -> None:
            started.set()
            for _ in range(3):
                try:
                    await asyncio.sleep(1.0)
                except asyncio.CancelledError:
                    continue

        bus = self.bus_on(transport, handlers=[(Job, stubborn)], dispose_timeout=0.2)
        await bus.start()
        await bus.send(Job(key="k"))
        await started.wait()
        begun = time.monotonic()
        await bus.dispose()
        took = time.monotonic() - begun
        assert took < 0.2 + DISPOSE_MARGIN, f"dispose took {took:.2f} s"
