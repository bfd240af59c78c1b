"""``MemoryTransport``: the default transport, a queue in this process's memory."""

from __future__ import annotations

import asyncio
import collections
import logging

from busflow._logs import with_fields
from busflow._transport import DeadLetter, Delivery, Subscription, TransportMessage

__all__ = ["MemoryTransport"]


class MemoryTransport:
    """One endpoint's queue in memory: fast, and lost when the process ends.

    It delivers every message that the endpoint subscribes to, in the order sent, redelivers
    retries after their delay from a timer (no worker waits for them), and keeps the most
    recent ``dead_letter_limit`` dead letters as plain data in ``dead_letters``. A message
    that no handler of this endpoint subscribes to is dropped with a warning: in one process
    nobody else could handle it. Messages sent before ``start`` wait for it.
    """

    def __init__(self, *, dead_letter_limit: int = 1000) -> None:
        if dead_letter_limit < 0:
            raise ValueError(f"dead_letter_limit must not be negative, not {dead_letter_limit}")
        self._logger = with_fields(logging.getLogger("busflow.transport"))
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._names: frozenset[str] | None = None
        self._unsettled = 0
        self._timers: set[asyncio.TimerHandle] = set()
        self._dead_letters: collections.deque[DeadLetter] = collections.deque(
            maxlen=dead_letter_limit
        )

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """The most recent dead letters, oldest first."""
        return list(self._dead_letters)

    async def start(self, subscription: Subscription) -> None:
        self._names = subscription.message_names
        waiting = [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        for delivery in waiting:
            self._put(delivery.message)

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        lost = self._queue.qsize() + len(self._timers) + self._unsettled
        if lost:
            self._logger.warning(
                "%d message(s) queued, waiting for a retry or being handled were not handled "
                "and are lost: the memory transport keeps nothing once closed",
                lost,
            )
        self._timers.clear()
        self._queue = asyncio.Queue()
        self._unsettled = 0

    async def send(self, message: TransportMessage) -> None:
        self._put(message)

    async def publish(self, message: TransportMessage) -> None:
        self._put(message)  # the same as send: one endpoint in one process

    async def receive(self) -> Delivery:
        delivery = await self._queue.get()
        self._unsettled += 1
        return delivery

    async def complete(self, delivery: Delivery) -> None:
        self._unsettled -= 1

    async def retry(self, delivery: Delivery, message: TransportMessage, delay: float) -> None:
        self._unsettled -= 1
        loop = asyncio.get_running_loop()

        def redeliver() -> None:
            self._timers.discard(timer)
            self._put(message)

        timer = loop.call_later(delay, redeliver)
        self._timers.add(timer)

    async def dead_letter(self, delivery: Delivery, dead_letter: DeadLetter) -> None:
        self._unsettled -= 1
        self._dead_letters.append(dead_letter)

    def _put(self, message: TransportMessage) -> None:
        if self._names is not None and message.name not in self._names:
            self._logger.warning("no handler for %s; the message was dropped", message.name)
            return
        self._queue.put_nowait(Delivery(message))
