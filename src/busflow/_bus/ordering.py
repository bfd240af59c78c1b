"""Per-workflow ordering: messages for one workflow instance are handled one at a time.

A message takes a turn keyed on what it will reach. Where that is known without a database
read it is the workflow instance itself: a lookup by ``workflow_id`` (the sticky reply
mapping) names it, and ``WorkflowKeys`` remembers, for each workflow this bus has saved or
found, which instance a lookup value leads to. Otherwise the key is the lookup itself. After
the lookup, the runner also takes the turn of each instance it found, so no two handlers of
one bus ever work on the same instance at once, whichever mapping found it.

A worker that finds a key busy leaves its job with the worker that holds the key and moves
on: messages for one workflow run in arrival order while other workflows keep every worker
busy.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, NamedTuple

from busflow._messages import Message, MessageAttributes
from busflow._workflow import MessageWorkflowMapping, WorkflowState, WorkflowStatus

__all__ = ["Job", "Queued", "Turns", "WorkflowKeys"]

Job = Callable[[], Awaitable[None]]


class Queued(NamedTuple):
    """A job waiting for its key's turn, and what it is about (for ``take_next``)."""

    job: Job
    subject: object = None


class Turns:
    """One job at a time per key, in the order the jobs arrived."""

    def __init__(self) -> None:
        self._waiting: dict[Hashable, collections.deque[Queued]] = {}
        self.stopping = False
        """Set by ``dispose``: a holder finishes its current job and leaves the rest."""

    def claim(self, key: Hashable) -> bool:
        """Take the key's turn if it is free; the caller must then ``run`` under it."""
        if key in self._waiting:
            return False
        self._waiting[key] = collections.deque()
        return True

    def wait_behind(self, key: Hashable, job: Job, subject: object = None) -> None:
        """Queue ``job`` behind the key's holder, who will run it."""
        self._waiting[key].append(Queued(job, subject))

    def take_next(self, key: Hashable, accept: Callable[[object], bool]) -> Queued | None:
        """For the key's holder: take the next waiting job, if ``accept`` takes its subject.

        The holder then owns that job's outcome, or hands it back with ``put_back``.
        """
        waiting = self._waiting.get(key)
        if not waiting or self.stopping or not accept(waiting[0].subject):
            return None
        return waiting.popleft()

    def put_back(self, key: Hashable, taken: Sequence[Queued]) -> None:
        """Return jobs taken with ``take_next`` to the front of the key's queue, in order."""
        self._waiting[key].extendleft(reversed(taken))

    async def run(self, key: Hashable, job: Job) -> None:
        """Run ``job`` under the key the caller claimed, then the jobs queued behind it.

        ``job``'s own error propagates; the queued jobs settle their own outcomes.
        """
        waiting = self._waiting[key]
        try:
            await job()
        finally:
            try:
                while waiting and not self.stopping:
                    await waiting.popleft().job()
            finally:
                del self._waiting[key]


class WorkflowKeys:
    """The ordering key of a lookup, and what this bus knows of where lookups lead."""

    def __init__(self, limit: int = 100_000) -> None:
        self._limit = limit
        self._instances: collections.OrderedDict[Hashable, Hashable] = collections.OrderedDict()

    @staticmethod
    def of_instance(state_type: type[WorkflowState], workflow_id: str) -> Hashable:
        return (state_type, workflow_id)

    def of_lookup(
        self,
        state_type: type[WorkflowState],
        mapping: MessageWorkflowMapping[Any, Any],
        message: Message,
        attributes: MessageAttributes,
    ) -> Hashable | None:
        """The key for a message that ``mapping`` routes; ``None`` where it has no value."""
        try:
            value = mapping.lookup(message, attributes)
            hash(value)
        except Exception:  # the persistence reports a broken lookup; no ordering for it
            return None
        if value is None:
            return None
        if mapping.maps_to == "workflow_id" and isinstance(value, str):
            return self.of_instance(state_type, value)
        key = (state_type, mapping.maps_to, value)
        return self._instances.get(key, key)

    def remember(self, state: WorkflowState, fields: tuple[str, ...]) -> None:
        """Record which instance each looked-up field value of ``state`` leads to."""
        state_type = type(state)
        instance = self.of_instance(state_type, state.workflow_id)
        running = state.workflow_status is WorkflowStatus.RUNNING
        for field in fields:
            if field == "workflow_id":
                continue
            value = getattr(state, field, None)
            try:
                key = (state_type, field, value)
                hash(key)
            except TypeError:
                continue
            if not running:
                self._instances.pop(key, None)
            elif self._instances.get(key) == instance:
                self._instances.move_to_end(key)
            else:
                self._instances[key] = instance
                if len(self._instances) > self._limit:
                    self._instances.popitem(last=False)
