"""The outbox: a handler's outgoing messages, saved with its state, then dispatched.

A workflow handler's messages are encoded before its save and written into the state's
``workflow_outbox``, in the same write as the state. Once the save succeeded the bus that
saved them dispatches them, and acknowledges the incoming message only after the transport
accepted them. Then it removes them from the stored outbox, by id and without a new version
(``Persistence.clear_outbox``), shortly after: if it saves the workflow again first, that
save leaves them out, and no extra write is needed.

Saved messages that another bus wrote are carried over untouched while that bus is surely
still dispatching them. If one is older than ``OUTBOX_RESCUE_AFTER``, the bus that saved it
died before clearing it: it is dispatched again (its id is the same, so a receiving workflow
drops a copy) and dropped. And a redelivered message that its workflow applied already
dispatches what that message saved, whatever its age: that is how a bus that died between
its save and its dispatch loses nothing.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, Protocol

from busflow._logs import error_for_log
from busflow._persistence import Persistence
from busflow._transport import TransportMessage
from busflow._workflow import OutboxMessage, WorkflowState

__all__ = ["OUTBOX_RESCUE_AFTER", "Deliver", "Dispatchable", "Outbox", "Schedule"]

CLEAR_DELAY = 0.5
"""Seconds after a dispatch before the dispatched messages are cleared from the store,
unless this bus saves the workflow again first."""
OUTBOX_RESCUE_AFTER = timedelta(seconds=30)
"""How old a saved message of another bus must be before this bus dispatches it itself."""


class Dispatchable(NamedTuple):
    message: TransportMessage
    publish: bool
    due_at: datetime | None = None
    """When to deliver it, for a delayed message, which goes to the ``TimeoutStore``."""


class Deliver(Protocol):
    """Hands one encoded message to the transport (the bus's, which also tracks it)."""

    async def __call__(self, message: TransportMessage, *, publish: bool) -> None: ...


Schedule = Callable[[Sequence[Dispatchable], WorkflowState | None], Awaitable[None]]
"""Stores delayed messages, sent by a workflow (or None), until they are due."""


def to_record(dispatchable: Dispatchable, origin: str | None, saved_at: datetime) -> OutboxMessage:
    message = dispatchable.message
    return OutboxMessage(
        message_id=message.message_id,
        name=message.name,
        body=message.body.decode(),
        correlation_id=message.correlation_id,
        attributes=dict(message.attributes),
        sticky_attributes=dict(message.sticky_attributes),
        publish=dispatchable.publish,
        partition_key=message.partition_key,
        origin=origin,
        deliver_at=dispatchable.due_at,
        saved_at=saved_at,
    )


def from_record(record: OutboxMessage) -> Dispatchable:
    message = TransportMessage(
        record.name,
        record.message_id,
        record.body.encode(),
        record.correlation_id,
        record.attributes,
        record.sticky_attributes,
        partition_key=record.partition_key,
    )
    return Dispatchable(message, record.publish, record.deliver_at)


_Key = tuple[type[WorkflowState], str]


class Outbox:
    """Dispatches outgoing messages, rescues those a dead bus saved, and clears them."""

    def __init__(
        self,
        *,
        deliver: Deliver,
        schedule: Schedule,
        persistence: Persistence,
        logger: logging.Logger,
        values_in_logs: bool = False,
        remember: int = 100_000,
    ) -> None:
        self._deliver = deliver
        self._schedule = schedule
        self._clear: Callable[[type[WorkflowState], str, Sequence[str]], Awaitable[None]] | None = (
            getattr(persistence, "clear_outbox", None)
        )
        self._logger = logger
        self._values_in_logs = values_in_logs
        self._remember = remember
        self._dispatched: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._clears: dict[_Key, tuple[asyncio.TimerHandle, list[str]]] = {}
        self._clearing: set[asyncio.Task[None]] = set()

    def dispatched(self, message_id: str) -> bool:
        """Whether this bus dispatched the message (within its memory of the latest ones)."""
        return message_id in self._dispatched

    async def dispatch(
        self, messages: Sequence[Dispatchable], sender: WorkflowState | None = None
    ) -> None:
        """Hand ``messages`` to the transport, and store the delayed ones for later."""
        delayed = [each for each in messages if each.due_at is not None]
        if delayed:
            await self._schedule(delayed, sender)
        for message, publish, due_at in messages:
            if due_at is None:
                await self._deliver(message, publish=publish)
            self._dispatched[message.message_id] = None
            if len(self._dispatched) > self._remember:
                self._dispatched.popitem(last=False)

    def carried(self, state: WorkflowState, now: datetime) -> list[OutboxMessage]:
        """What a new save of ``state`` keeps of its outbox: what no bus surely dispatched."""
        return [
            record
            for record in state.workflow_outbox
            if not self.dispatched(record.message_id) and not _abandoned(record, now)
        ]

    async def rescue(self, state: WorkflowState, now: datetime) -> None:
        """Dispatch the saved messages of ``state`` that a bus which died left behind."""
        abandoned = [
            record
            for record in state.workflow_outbox
            if not self.dispatched(record.message_id) and _abandoned(record, now)
        ]
        if abandoned:
            self._logger.warning(
                "workflow %s of %s holds %d outgoing message(s) saved over %s ago and never "
                "cleared; dispatching them (a receiving workflow drops what it has)",
                state.workflow_id,
                state.workflow_name,
                len(abandoned),
                OUTBOX_RESCUE_AFTER,
            )
            await self.dispatch_saved(state, abandoned)

    async def dispatch_saved(self, state: WorkflowState, records: Iterable[OutboxMessage]) -> int:
        """Dispatch saved messages of ``state`` this bus has not dispatched, then clear them."""
        waiting = [record for record in records if not self.dispatched(record.message_id)]
        await self.dispatch([from_record(record) for record in waiting], state)
        if waiting:
            self.clear_later(state, [record.message_id for record in waiting])
        return len(waiting)

    def saved(self, state: WorkflowState) -> None:
        """This bus saved ``state``, leaving out what it had dispatched: no clear is due."""
        pending = self._clears.pop((type(state), state.workflow_id), None)
        if pending is not None:
            pending[0].cancel()

    def clear_later(self, state: WorkflowState, message_ids: Sequence[str]) -> None:
        """Remove ``message_ids`` from the stored outbox soon, unless saved again first."""
        if self._clear is None or not message_ids:
            return
        key = (type(state), state.workflow_id)
        pending = self._clears.pop(key, None)
        ids = list(message_ids)
        if pending is not None:
            pending[0].cancel()
            ids = pending[1] + ids
        timer = asyncio.get_running_loop().call_later(CLEAR_DELAY, self._start_clear, key)
        self._clears[key] = (timer, ids)

    def _start_clear(self, key: _Key) -> None:
        _, ids = self._clears.pop(key)
        self._start_clear_now(key, ids)

    async def _run_clear(self, key: _Key, message_ids: list[str]) -> None:
        assert self._clear is not None
        state_type, workflow_id = key
        try:
            await self._clear(state_type, workflow_id, message_ids)
        except Exception as error:  # harmless: a later save or rescue drops them
            self._logger.info(
                "clearing %d dispatched message(s) from the outbox of %s %s failed: %s",
                len(message_ids),
                state_type.workflow_name,
                workflow_id,
                error_for_log(error, values=self._values_in_logs),
            )

    async def close(self) -> None:
        """Clear now what is due to be cleared; wait for it half a second at most."""
        due = list(self._clears.items())
        self._clears.clear()
        for key, (timer, ids) in due:
            timer.cancel()
            self._start_clear_now(key, ids)
        if self._clearing:
            await asyncio.wait(self._clearing, timeout=0.5)

    def _start_clear_now(self, key: _Key, message_ids: list[str]) -> None:
        task = asyncio.get_running_loop().create_task(self._run_clear(key, message_ids))
        self._clearing.add(task)
        task.add_done_callback(self._clearing.discard)


def _abandoned(record: OutboxMessage, now: datetime) -> bool:
    saved_at = record.saved_at
    if saved_at is None:
        return True
    if saved_at.tzinfo is None:
        saved_at = saved_at.replace(tzinfo=UTC)
    return now - saved_at > OUTBOX_RESCUE_AFTER
