"""Workflow state, the mapping of messages to state, and the ``Workflow`` base class."""

from __future__ import annotations

import enum
import inspect
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, ClassVar, Generic, Protocol, TypeAlias, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from busflow._errors import BusError, ConfigurationError
from busflow._messages import Message, MessageAttributes

__all__ = [
    "SENT_BY_WORKFLOW_ID",
    "SENT_BY_WORKFLOW_NAME",
    "WORKFLOW_ID",
    "WORKFLOW_NAME",
    "MessageWorkflowMapping",
    "OutboxMessage",
    "StateTypesByName",
    "Workflow",
    "WorkflowAddress",
    "WorkflowHandler",
    "WorkflowMapper",
    "WorkflowSender",
    "WorkflowState",
    "WorkflowStatus",
    "addressee_of",
    "sender_of",
    "state_from",
]

WORKFLOW_ID = "workflow_id"
"""Sticky attribute: the workflow that replies go back to (by default, the one that sent)."""
WORKFLOW_NAME = "workflow_name"
"""Sticky attribute: that workflow's ``workflow_name``."""
SENT_BY_WORKFLOW_ID = "busflow_sent_by_workflow_id"
"""Attribute of one message: the workflow whose handler sent it."""
SENT_BY_WORKFLOW_NAME = "busflow_sent_by_workflow_name"
"""Attribute of one message: that workflow's ``workflow_name``."""


class WorkflowStatus(enum.StrEnum):
    """Where a workflow is in its life."""

    RUNNING = "running"
    COMPLETE = "complete"
    DISCARD = "discard"


class OutboxMessage(BaseModel):
    """A message that a workflow handler sent, saved with the state until it has left."""

    message_id: str
    name: str
    """The message's ``message_name``."""
    body: str
    """The message's JSON."""
    correlation_id: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    sticky_attributes: dict[str, Any] = Field(default_factory=dict)
    publish: bool = False
    """Published as an event, rather than sent as a command."""
    partition_key: str | None = None
    """The value of the message's ``partition_by`` field, for a partitioned transport."""
    origin: str | None = None
    """The id of the message whose handling sent it."""
    deliver_at: datetime | None = None
    """When to deliver it, for a delayed message: it goes to the ``TimeoutStore``."""
    saved_at: datetime | None = None
    """When the handler's save wrote it: the bus that saved it dispatches it at once, and
    another bus dispatches it only once it has waited long enough that the first must have
    died (``OUTBOX_RESCUE_AFTER``)."""


class WorkflowAddress(BaseModel):
    """One workflow instance: its ``workflow_name`` and its ``workflow_id``."""

    workflow_name: str
    workflow_id: str

    @classmethod
    def of(cls, name: object, workflow_id: object) -> WorkflowAddress | None:
        """The address of two attribute values, if both are strings."""
        if isinstance(name, str) and isinstance(workflow_id, str):
            return cls(workflow_name=name, workflow_id=workflow_id)
        return None


def addressee_of(attributes: MessageAttributes) -> WorkflowAddress | None:
    """The workflow a message is addressed to by its sticky attributes, if any."""
    sticky = attributes.sticky_attributes
    return WorkflowAddress.of(sticky.get(WORKFLOW_NAME), sticky.get(WORKFLOW_ID))


def sender_of(attributes: MessageAttributes) -> WorkflowAddress | None:
    """The workflow whose handler sent a message, if a workflow's did."""
    plain = attributes.attributes
    return WorkflowAddress.of(plain.get(SENT_BY_WORKFLOW_NAME), plain.get(SENT_BY_WORKFLOW_ID))


class WorkflowState(BaseModel):
    """Base class for the state that a workflow keeps between messages.

    The framework's own fields carry the ``workflow_`` prefix so that they never collide
    with fields of yours such as ``status``. Every concrete state class names itself in
    namespace style, for example ``workflow_name = "shop/order"``; a persistence derives its
    table or collection from that name, so keep it stable.

    ``workflow_applied`` and ``workflow_outbox`` are the bus's record of what messages did:
    a persistence stores them with the rest of the state, in the same write, and that is what
    makes a message's effects happen once.
    """

    model_config = ConfigDict(extra="ignore")

    workflow_name: ClassVar[str]

    workflow_id: str
    workflow_version: int = Field(default=0, ge=0)
    workflow_status: WorkflowStatus = WorkflowStatus.RUNNING
    workflow_applied: list[str] = Field(default_factory=list)
    """The ids of the latest messages applied to this workflow, oldest first."""
    workflow_outbox: list[OutboxMessage] = Field(default_factory=list)
    """Messages that handlers sent, saved with the state, that may not have left yet."""
    workflow_originator: WorkflowAddress | None = None
    """The workflow whose message started this one, if one did (``reply_to_originator``)."""


M = TypeVar("M", bound=Message)
S = TypeVar("S", bound=WorkflowState)


LookupResult: TypeAlias = (
    str
    | int
    | float
    | Decimal
    | uuid.UUID
    | datetime
    | date
    | time
    | timedelta
    | enum.Enum
    | bytes
    | None
)
"""What a lookup may return: a scalar, compared as it is stored (see ``busflow._values``), or
``None`` for "no workflow". Any other value pydantic serializes as a scalar (an IP address, a
path) is taken at runtime too; a dict, list or model is refused (``InvalidLookupValueError``)."""


@dataclass(frozen=True)
class MessageWorkflowMapping(Generic[M, S]):
    """How a message finds the workflow states it belongs to.

    ``lookup(message, attributes)`` returns the value to look for (or ``None`` for "no
    workflow"), and ``maps_to`` names the state field that must equal it. The value is only
    ever compared by equality.
    """

    lookup: Callable[[M, MessageAttributes], LookupResult]
    maps_to: str


def state_from(state_type: type[S], data: Mapping[str, Any], *, by_alias: bool) -> S:
    """``state_type.model_validate(data, by_alias=by_alias, by_name=True)``, through the
    model's validator itself: it runs for every message and every save, and
    ``model_validate``'s wrapper costs half as much again as validating a small state."""
    state: S = state_type.__pydantic_validator__.validate_python(
        data, by_alias=by_alias, by_name=True
    )
    return state


def workflow_id_from_sticky_attributes(
    _message: Message, attributes: MessageAttributes
) -> str | None:
    value = attributes.sticky_attributes.get(WORKFLOW_ID)
    return value if isinstance(value, str) else None


BY_WORKFLOW_ID: MessageWorkflowMapping[Any, Any] = MessageWorkflowMapping(
    lookup=workflow_id_from_sticky_attributes, maps_to="workflow_id"
)
"""What ``when`` uses without a mapping: the sticky ``workflow_id`` to ``workflow_id``."""

HandlerFor: TypeAlias = Callable[
    [M, S, MessageAttributes], Awaitable["S | Mapping[str, Any] | None"]
]
"""``async def handler(message, state, attributes)`` for messages of type ``M``, bound to a
workflow instance: ``started_by`` and ``when`` check that it takes the type they are given."""

WorkflowHandler: TypeAlias = HandlerFor[Any, S]
"""A handler as a route keeps it, for whichever message type the route has."""


@dataclass(frozen=True)
class WorkflowRoute(Generic[S]):
    """One message type a workflow reacts to."""

    message_type: type[Message]
    handler: WorkflowHandler[S]
    mapping: MessageWorkflowMapping[Any, S] | None
    """``None`` for the message that starts the workflow."""

    @property
    def starts_workflow(self) -> bool:
        return self.mapping is None


class WorkflowMapper(Generic[S]):
    """Collects what a workflow reacts to; handed to ``Workflow.configure_workflow``."""

    def __init__(self, workflow_name: str) -> None:
        self._workflow_name = workflow_name
        self._state_type: type[S] | None = None
        self._routes: list[WorkflowRoute[S]] = []

    def with_state(self, state_type: type[S]) -> WorkflowMapper[S]:
        check_state_type(state_type, owner=self._workflow_name)
        self._state_type = state_type
        return self

    def started_by(self, message_type: type[M], handler: HandlerFor[M, S]) -> WorkflowMapper[S]:
        self._routes.append(WorkflowRoute(message_type, handler, None))
        return self

    def when(
        self,
        message_type: type[M],
        handler: HandlerFor[M, S],
        mapping: MessageWorkflowMapping[M, S] | None = None,
    ) -> WorkflowMapper[S]:
        self._routes.append(WorkflowRoute(message_type, handler, mapping or BY_WORKFLOW_ID))
        return self

    @property
    def state_type(self) -> type[S]:
        if self._state_type is None:
            raise ConfigurationError(
                f"workflow {self._workflow_name} has no state type: call "
                "mapper.with_state(YourState) in configure_workflow"
            )
        return self._state_type

    @property
    def routes(self) -> tuple[WorkflowRoute[S], ...]:
        return tuple(self._routes)

    @property
    def mappings(self) -> list[MessageWorkflowMapping[Any, S]]:
        """Every distinct mapping, the default ``workflow_id`` one included."""
        seen: list[MessageWorkflowMapping[Any, S]] = []
        for route in self._routes:
            if route.mapping is not None and route.mapping not in seen:
                seen.append(route.mapping)
        return seen

    def validate(self) -> None:
        """Fail with a clear error if the workflow cannot run as configured."""
        state_type = self.state_type
        if not any(route.starts_workflow for route in self._routes):
            raise ConfigurationError(
                f"workflow {self._workflow_name} is never started: call "
                "mapper.started_by(MessageType, self.handler) in configure_workflow"
            )
        for route in self._routes:
            if not inspect.iscoroutinefunction(route.handler):
                raise ConfigurationError(
                    f"workflow {self._workflow_name}: the handler for "
                    f"{route.message_type.__name__} must be an async method"
                )
        try:
            state_type.model_validate({"workflow_id": "new"})
        except ValidationError as error:
            missing = sorted(
                {str(problem["loc"][0]) for problem in error.errors() if problem["loc"]}
            )
            raise ConfigurationError(
                f"workflow {self._workflow_name}: a new {state_type.__name__} is made from its "
                f"defaults, but {missing} have none; give them defaults"
            ) from error
        check_mapping_fields(state_type, self.mappings, owner=f"workflow {self._workflow_name}")


def check_state_type(state_type: type[WorkflowState], *, owner: str) -> None:
    """Check what every persistence relies on: a WorkflowState subclass with a name."""
    if not (isinstance(state_type, type) and issubclass(state_type, WorkflowState)):
        raise ConfigurationError(f"{owner}: {state_type!r} is not a WorkflowState subclass")
    name = getattr(state_type, "workflow_name", None)
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(
            f"{owner}: {state_type.__name__} has no workflow_name; add a class attribute "
            'such as workflow_name = "shop/order"'
        )


class StateTypesByName:
    """State types by ``workflow_name``: the one place that refuses two types sharing one.

    A persistence derives a state type's table or collection from its name, so two types
    with one name would overwrite each other's workflows.
    """

    def __init__(self) -> None:
        self._types: dict[str, type[WorkflowState]] = {}

    def add(self, state_type: type[WorkflowState], *, owner: str) -> None:
        name = getattr(state_type, "workflow_name", None)
        if isinstance(name, str) and self._types.get(name) is state_type:
            return  # known already: the common case, on every read and save
        check_state_type(state_type, owner=owner)
        known = self._types.setdefault(state_type.workflow_name, state_type)
        if known is not state_type:
            raise ConfigurationError(
                f"{state_type.__name__} and {known.__name__} both use workflow_name "
                f"{state_type.workflow_name!r}; give each state type its own name"
            )


_SET_BY_BUSFLOW = (
    "workflow_status",
    "workflow_version",
    "workflow_applied",
    "workflow_outbox",
    "workflow_originator",
)


def lookup_field_problem(state_type: type[WorkflowState], field_name: str) -> str | None:
    """Why states cannot be looked up by ``field_name``, if they cannot: it is not a field of
    the state, or busflow sets it itself (``workflow_status``, ``workflow_version``, the
    record). Said to follow "maps to" or "by"."""
    fields = sorted(set(state_type.model_fields) - set(_SET_BY_BUSFLOW))
    if field_name in _SET_BY_BUSFLOW:
        return f"{field_name!r}, which busflow sets itself; use one of {fields}"
    if field_name not in state_type.model_fields:
        return f"{field_name!r}, which is not a field of {state_type.__name__}; fields are {fields}"
    return None


def check_mapping_fields(
    state_type: type[WorkflowState],
    mappings: Sequence[MessageWorkflowMapping[Any, Any]],
    *,
    owner: str,
) -> None:
    """Fail with a clear error if a mapping maps to a field the state does not have, or to
    one that busflow sets itself (``workflow_status``, ``workflow_version``, the record)."""
    for mapping in mappings:
        problem = lookup_field_problem(state_type, mapping.maps_to)
        if problem is not None:
            raise ConfigurationError(f"{owner}: a mapping maps to {problem}")


class WorkflowSender(Protocol):
    """What a workflow can do with the bus from inside a handler.

    ``deliver_at`` (a timezone-aware datetime) or ``deliver_after`` (a timedelta) delays the
    message: it is stored until then (the persistence must be a ``TimeoutStore``).
    """

    async def send(
        self,
        message: Message,
        attributes: MessageAttributes | None = None,
        *,
        deliver_at: datetime | None = None,
        deliver_after: timedelta | None = None,
    ) -> None: ...

    async def publish(
        self,
        message: Message,
        attributes: MessageAttributes | None = None,
        *,
        deliver_at: datetime | None = None,
        deliver_after: timedelta | None = None,
    ) -> None: ...


class Workflow(Generic[S]):
    """Base class for a workflow: a long-running process that reacts to messages.

    Subclasses implement ``configure_workflow`` and ``async`` handlers of the form
    ``handler(self, message, state, attributes)``, which return the changes to the state (a
    dict or a whole state) or ``None`` for no change. Inside a handler ``self.bus`` sends
    and publishes; those messages leave only once the state change has been saved.
    """

    bus: WorkflowSender
    """Set by the bus when it registers the workflow."""

    def configure_workflow(self, mapper: WorkflowMapper[S]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement configure_workflow")

    async def request_timeout(
        self,
        message: Message,
        *,
        after: timedelta | None = None,
        at: datetime | None = None,
    ) -> None:
        """Send ``message`` to this workflow itself, ``after`` a while or ``at`` a time.

        Handle it with ``mapper.when(MessageType, handler)``: it comes back by the sticky
        ``workflow_id``. Asked for in a handler, it is stored only if the handler's state is
        saved. A timeout that arrives once the workflow is complete is ignored, and counted
        (``BusMetrics.timeouts_ignored``).
        """
        await self.bus.send(message, deliver_after=after, deliver_at=at)

    async def reply_to_originator(self, state: S, message: Message) -> None:
        """Send ``message`` to the workflow whose message started this one.

        Handle it there with ``mapper.when(MessageType, handler)``: it arrives by the sticky
        ``workflow_id``. Raises ``BusError`` if no workflow's message started this one.
        """
        originator = state.workflow_originator
        if originator is None:
            raise BusError(
                f"{type(self).__name__} cannot reply to the originator of workflow "
                f"{state.workflow_id}: no workflow's message started it; send "
                f"{type(message).__name__} instead"
            )
        await self.bus.send(message, _addressed_to(originator))

    async def reply(self, attributes: MessageAttributes, message: Message) -> None:
        """Send ``message`` to the workflow that sent the message whose ``attributes`` these are.

        Handle it there with ``mapper.when(MessageType, handler)``: it arrives by the sticky
        ``workflow_id``. Raises ``BusError`` if no workflow's handler sent that message.
        """
        sender = sender_of(attributes)
        if sender is None:
            raise BusError(
                f"{type(self).__name__} cannot reply with {type(message).__name__}: the "
                "message being handled was not sent by a workflow; send it instead"
            )
        await self.bus.send(message, _addressed_to(sender))

    def complete_workflow(self, **changes: Any) -> dict[str, Any]:
        """Return ``changes`` that also mark the workflow complete; it gets no more messages."""
        return {**changes, "workflow_status": WorkflowStatus.COMPLETE}

    def discard_workflow(self) -> dict[str, Any]:
        """Return a result that drops the handler's changes: nothing is saved."""
        return {"workflow_status": WorkflowStatus.DISCARD}


def _addressed_to(workflow: WorkflowAddress) -> MessageAttributes:
    """Attributes that make a message find ``workflow`` by the sticky ``workflow_id``."""
    return MessageAttributes(
        sticky_attributes={WORKFLOW_ID: workflow.workflow_id, WORKFLOW_NAME: workflow.workflow_name}
    )
