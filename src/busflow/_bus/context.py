"""The handling context: what one handler run sends, held in its outbox until it has saved."""

from __future__ import annotations

import contextvars
from datetime import datetime, timedelta
from typing import NamedTuple

from busflow._bus.ids import derived_message_id
from busflow._messages import Message, MessageAttributes
from busflow._workflow import (
    SENT_BY_WORKFLOW_ID,
    SENT_BY_WORKFLOW_NAME,
    WORKFLOW_ID,
    WORKFLOW_NAME,
    WorkflowSender,
)

__all__ = [
    "ContextualSender",
    "HandlingContext",
    "Outgoing",
    "current_context",
]


class Outgoing(NamedTuple):
    """A message on its way out: the attributes it was given, and its id."""

    message: Message
    attributes: MessageAttributes
    message_id: str
    publish: bool
    due_at: datetime | None = None
    """When to deliver it, for a delayed message."""


class HandlingContext:
    """One handler run: the incoming message's attributes, and the messages it sends.

    Messages sent while the context is open wait in ``outbox`` until the handler's state is
    saved. Each gets an id derived from the incoming message's id, the handler, the workflow
    and its position, so that running the handler again sends the same ids. A workflow's
    messages carry its address twice: as the sticky ``workflow_id`` and ``workflow_name``, where
    replies go back to (unless the handler addresses another workflow), and as attributes of
    that one message, which say who sent it.
    """

    def __init__(
        self,
        bus: WorkflowSender,
        incoming: MessageAttributes,
        *,
        workflow: tuple[str, str] | None,
        handler: str,
    ) -> None:
        """``workflow``: the name and id of the workflow whose handler runs here; ``None`` for
        a plain handler."""
        self.bus = bus
        self.incoming = incoming
        self.workflow_name: str | None = None if workflow is None else workflow[0]
        self.workflow_id: str | None = None if workflow is None else workflow[1]
        self.handler = handler
        self.outbox: list[Outgoing] = []
        self.open = True
        self._sent = 0
        self._token: contextvars.Token[HandlingContext | None] | None = None

    def __enter__(self) -> None:
        """Within this block (the handler's run), ``current_context()`` is this context."""
        self._token = _current.set(self)

    def __exit__(self, *_: object) -> None:
        assert self._token is not None
        _current.reset(self._token)
        self._token = None

    def outgoing(
        self,
        message: Message,
        given: MessageAttributes | None,
        *,
        publish: bool,
        due_at: datetime | None = None,
    ) -> Outgoing:
        given = given or MessageAttributes()
        sticky = dict(self.incoming.sticky_attributes)
        plain = dict(given.attributes)
        if self.workflow_name is not None:  # and so its id
            sticky[WORKFLOW_ID] = self.workflow_id
            sticky[WORKFLOW_NAME] = self.workflow_name
            plain[SENT_BY_WORKFLOW_ID] = self.workflow_id
            plain[SENT_BY_WORKFLOW_NAME] = self.workflow_name
        sticky.update(given.sticky_attributes)
        message_id = given.message_id or derived_message_id(
            self.incoming.message_id, self.handler, self.workflow_id, self._sent
        )
        self._sent += 1
        attributes = MessageAttributes(
            correlation_id=given.correlation_id or self.incoming.correlation_id,
            attributes=plain,
            sticky_attributes=sticky,
        )
        return Outgoing(message, attributes, message_id, publish, due_at)


_current: contextvars.ContextVar[HandlingContext | None] = contextvars.ContextVar(
    "busflow_handling", default=None
)


def current_context() -> HandlingContext | None:
    """The context of the handler running in this task, if any."""
    return _current.get()


class ContextualSender:
    """``Workflow.bus``: the bus that is running the handler, or else the one given.

    One workflow instance may be registered on several buses; inside a handler its sends
    always go to the bus that runs that handler, through that handler's outbox.
    """

    def __init__(self, fallback: WorkflowSender) -> None:
        self._fallback = fallback

    def _target(self) -> WorkflowSender:
        context = _current.get()
        return self._fallback if context is None else context.bus

    async def send(
        self,
        message: Message,
        attributes: MessageAttributes | None = None,
        *,
        deliver_at: datetime | None = None,
        deliver_after: timedelta | None = None,
    ) -> None:
        await self._target().send(
            message, attributes, deliver_at=deliver_at, deliver_after=deliver_after
        )

    async def publish(
        self,
        message: Message,
        attributes: MessageAttributes | None = None,
        *,
        deliver_at: datetime | None = None,
        deliver_after: timedelta | None = None,
    ) -> None:
        await self._target().publish(
            message, attributes, deliver_at=deliver_at, deliver_after=deliver_after
        )

    def __repr__(self) -> str:
        return f"ContextualSender(fallback={self._fallback!r})"
