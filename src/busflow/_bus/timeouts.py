"""Delayed messages: when they are due, and the poller that delivers them from the store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from busflow._bus.outbox import Deliver
from busflow._errors import ConfigurationError
from busflow._logs import error_for_log
from busflow._timeouts import TimeoutStore

__all__ = ["DUE_AT_ATTRIBUTE", "TimeoutPoller", "TimeoutPolling", "due_time"]

CLAIM_CHUNK = 10
"""How many due messages a poll claims before it delivers them."""
DUE_AT_ATTRIBUTE = "busflow_due_at"
"""The attribute a delayed message carries when delivered: when it was due (ISO 8601)."""


@dataclass(frozen=True)
class TimeoutPolling:
    """How a bus polls the ``TimeoutStore`` for due messages."""

    interval: float = 1.0
    """Seconds between polls while messages keep coming due."""
    max_interval: float = 5.0
    """The longest wait between polls: the wait doubles up to it while nothing is due."""
    lease: timedelta = timedelta(seconds=30)
    """How long a claimed message is this bus's alone; after that another bus may take it."""
    batch: int = 100
    """The most messages one poll claims."""

    def __post_init__(self) -> None:
        if not 0 < self.interval <= self.max_interval:
            raise ConfigurationError(
                f"timeout polling needs 0 < interval <= max_interval, not {self.interval} and "
                f"{self.max_interval}"
            )
        if self.lease <= timedelta(0) or self.batch < 1:
            raise ConfigurationError("timeout polling needs a positive lease and batch")


def due_time(deliver_at: datetime | None, deliver_after: timedelta | None) -> datetime | None:
    """When a message sent with these arguments is due; None to send it now."""
    if deliver_at is not None and deliver_after is not None:
        raise ConfigurationError("give deliver_at or deliver_after, not both")
    if deliver_after is not None:
        if deliver_after < timedelta(0):
            raise ConfigurationError(f"deliver_after must not be negative, not {deliver_after}")
        return datetime.now(UTC) + deliver_after
    if deliver_at is not None and deliver_at.tzinfo is None:
        raise ConfigurationError(
            f"deliver_at must be timezone-aware (for example datetime.now(UTC)), not {deliver_at}"
        )
    return deliver_at


class TimeoutPoller:
    """Claims due messages from the store, delivers them, and removes them.

    It polls every ``interval`` while messages come due, backs off to ``max_interval`` while
    none are, and wakes early for a message this bus schedules sooner than its next poll.
    """

    def __init__(
        self,
        store: TimeoutStore,
        deliver: Deliver,
        polling: TimeoutPolling,
        logger: logging.Logger,
        values_in_logs: bool = False,
    ) -> None:
        self._store = store
        self._values_in_logs = values_in_logs
        self._deliver = deliver
        self._polling = polling
        self._logger = logger
        self.owner = f"bus-{uuid.uuid4().hex}"
        self._wake = asyncio.Event()
        self._next_poll = 0.0
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="busflow-timeouts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({self._task}, timeout=0.5)

    def scheduled(self, due_at: datetime) -> None:
        """This bus stored a message due at ``due_at``: poll by then."""
        seconds = max(0.0, (due_at - datetime.now(UTC)).total_seconds())
        if time.monotonic() + seconds < self._next_poll:
            asyncio.get_running_loop().call_later(seconds, self._wake.set)

    async def poll_once(self) -> int:
        """Claim, deliver and remove up to ``batch`` messages due now; return how many.

        It claims a few at a time and delivers them at once, so that no lease waits on the
        claiming of a whole batch.
        """
        delivered = 0
        while delivered < self._polling.batch:
            chunk = min(CLAIM_CHUNK, self._polling.batch - delivered)
            claimed = await self._store.claim_due_messages(
                datetime.now(UTC), owner=self.owner, lease=self._polling.lease, limit=chunk
            )
            for each in claimed:
                scheduled = each.scheduled
                message = scheduled.message
                attributes = {**message.attributes, DUE_AT_ATTRIBUTE: scheduled.due_at.isoformat()}
                await self._deliver(
                    message._replace(attributes=attributes), publish=scheduled.publish
                )
                await self._store.remove_claimed_message(each)
            delivered += len(claimed)
            if len(claimed) < chunk:
                break
        self.delivered += delivered
        return delivered

    async def _run(self) -> None:
        wait = self._polling.interval
        while True:
            try:
                found = await self.poll_once()
            except Exception as error:
                self._logger.warning(
                    "polling for due messages failed: %s",
                    error_for_log(error, values=self._values_in_logs),
                )
                found = 0
            if found >= self._polling.batch:
                continue
            wait = self._polling.interval if found else min(wait * 2, self._polling.max_interval)
            self._next_poll = time.monotonic() + wait
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
