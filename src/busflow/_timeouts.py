"""The contract of a store of messages to deliver later: timeouts, and delayed sends.

``TimeoutStore`` is an optional protocol beside ``Persistence``: a persistence that
implements it lets the bus send messages with ``deliver_at`` or ``deliver_after``. The bus
stores such a message (idempotently, by its id), and each bus polls for due ones: it claims a
due message with a lease that expires, hands it to the transport, then removes it. A bus
that dies holding a lease leaves the message to another bus once the lease has expired, so
delivery is at least once, with the message's id kept for the receiving workflow to drop a
second copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from busflow._transport import TransportMessage

__all__ = ["ClaimedMessage", "ScheduledMessage", "TimeoutStore"]


@dataclass(frozen=True)
class ScheduledMessage:
    """A message to hand to the transport at ``due_at``."""

    message: TransportMessage
    publish: bool
    due_at: datetime
    """When it is due, timezone-aware."""
    workflow_name: str | None = None
    """The workflow that asked for it, for operators; None for a send from outside one."""
    workflow_id: str | None = None


@dataclass(frozen=True)
class ClaimedMessage:
    """A due message that one bus holds a lease on until ``leased_until``."""

    scheduled: ScheduledMessage
    owner: str
    leased_until: datetime


@runtime_checkable
class TimeoutStore(Protocol):
    """Stores messages until they are due, and hands each due one to one bus at a time."""

    async def schedule_messages(self, messages: Sequence[ScheduledMessage]) -> None:
        """Store ``messages``; one already stored under the same message id stays as it is."""

    async def claim_due_messages(
        self, now: datetime, *, owner: str, lease: timedelta, limit: int
    ) -> list[ClaimedMessage]:
        """Lease up to ``limit`` messages due at ``now`` and not leased, earliest first.

        Each is claimed atomically: of two buses polling at once, one gets it.
        """

    async def remove_claimed_message(self, claimed: ClaimedMessage) -> None:
        """Remove a message once delivered, unless its lease expired and another bus took it."""
