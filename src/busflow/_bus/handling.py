"""The handling of one delivery: its units of work, their outcomes, and when it is settled."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from busflow._bus.ordering import Job
from busflow._logs import about_message
from busflow._messages import Message, MessageAttributes
from busflow._transport import Delivery

__all__ = ["Failure", "Handling"]


@dataclass(frozen=True)
class Failure:
    handler: str
    error: BaseException


def being_cancelled() -> bool:
    """Whether the running task itself is being cancelled (not just an await inside it)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@dataclass(eq=False, slots=True)
class Handling:
    """One delivery while its subscribers handle it.

    Each subscriber's work is a unit; a unit may hand part of its work to the worker that
    holds a workflow's turn. The delivery is settled, once, when the last unit is over:
    acknowledged if every unit succeeded, otherwise retried or dead-lettered.
    """

    delivery: Delivery
    message: Message
    attributes: MessageAttributes
    settle: Callable[[Handling], Awaitable[None]]
    pending: int = 1
    """Units still running or waiting, plus one for the dispatch itself."""
    completed: list[str] = field(default_factory=list)
    """What finished: subscribers, and workflow instances of a subscriber; see
    ``TransportMessage.completed_by``."""
    failures: list[Failure] = field(default_factory=list)
    alone: bool = False
    """Set when a batch that this message was part of failed: it then runs on its own."""

    def already_done(self, completion: str) -> bool:
        return completion in self.delivery.message.completed_by

    def unit(self, handler: str, work: Job, *, completion: str | None, queued: bool) -> Job:
        """Wrap ``work`` as a unit of this handling: its outcome is recorded, never raised.

        A ``queued`` unit waits behind a workflow's turn, and runs in the worker that holds
        it: it then says in its log records which message it is about.
        """
        self.pending += 1

        async def run() -> None:
            try:
                await work()
            except asyncio.CancelledError as error:
                if being_cancelled():
                    raise  # the bus is stopping: this handling is abandoned, not settled
                self.failures.append(Failure(handler, error))
            except Exception as error:
                self.failures.append(Failure(handler, error))
            else:
                if completion is not None:
                    self.completed.append(completion)
            await self.unit_done()

        if not queued:
            return run

        async def run_queued() -> None:
            with about_message(self.delivery.message):
                await run()

        return run_queued

    async def unit_done(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            await self.settle(self)
