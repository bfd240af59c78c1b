"""What a bus still owes: the work that ``wait_until_idle`` waits for."""

from __future__ import annotations

import asyncio

__all__ = ["WorkTracker"]


class WorkTracker:
    """Counts the messages this bus expects to handle and the deliveries in its hands.

    A message this bus sends is expected back when this bus handles its name; a message handed
    back for a retry is expected again. The bus is idle when nothing is expected and nothing
    is in hand. With several processes on one queue another process may take a message this
    bus sent: then wait on what the message does, not on this bus.
    """

    def __init__(self) -> None:
        self._expected: dict[str, int] = {}
        self._in_hand = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def expect(self, message_id: str) -> None:
        expected = self._expected
        expected[message_id] = expected.get(message_id, 0) + 1
        if self._idle.is_set():
            self._idle.clear()

    def forget(self, message_id: str) -> None:
        """A message that was expected will not come: its sending failed."""
        self._take(message_id)
        self._check()

    def received(self, message_id: str) -> None:
        self._in_hand += 1
        self._take(message_id)
        if self._idle.is_set():
            self._idle.clear()

    def settled(self, message_id: str, *, retried: bool) -> None:
        self._in_hand -= 1
        if retried:
            self._expected[message_id] = self._expected.get(message_id, 0) + 1
        self._check()

    def reset(self) -> None:
        """Nothing is owed any more: the bus was disposed."""
        self._expected.clear()
        self._in_hand = 0
        self._idle.set()

    @property
    def expected(self) -> int:
        return sum(self._expected.values())

    @property
    def in_hand(self) -> int:
        return self._in_hand

    async def wait(self) -> None:
        await self._idle.wait()

    def _take(self, message_id: str) -> None:
        count = self._expected.get(message_id, 0)
        if count > 1:
            self._expected[message_id] = count - 1
        elif count == 1:
            del self._expected[message_id]

    def _check(self) -> None:
        if self._in_hand == 0 and not self._expected:
            self._idle.set()
