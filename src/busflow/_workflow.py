"""Workflow state, the mapping of messages to state, and the ``Workflow`` base class."""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeAlias, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from busflow._errors import ConfigurationError
from busflow._messages import Message, MessageAttributes

__all__ = [
    "MessageWorkflowMapping",
    "Workflow",
    "WorkflowHandler",
    "WorkflowMapper",
    "WorkflowSender",
    "WorkflowState",
    "WorkflowStatus",
]


class WorkflowStatus(enum.StrEnum):
    """Where a workflow is in its life."""

    RUNNING = "running"
    COMPLETE = "complete"
    DISCARD = "discard"


class WorkflowState(BaseModel):
    """Base class for the state that a workflow keeps between messages.

    The framework's own fields carry the ``workflow_`` prefix so that they never collide
    with fields of yours such as ``status``. Every concrete state class names itself in
    namespace style, for example ``workflow_name = "shop/order"``; a persistence derives its
    table or collection from that name, so keep it stable.
    """

    model_config = ConfigDict(extra="ignore")

    workflow_name: ClassVar[str]

    workflow_id: str
    workflow_version: int = Field(default=0, ge=0)
    workflow_status: WorkflowStatus = WorkflowStatus.RUNNING


M = TypeVar("M", bound=Message)
S = TypeVar("S", bound=WorkflowState)


@dataclass(frozen=True)
class MessageWorkflowMapping(Generic[M, S]):
    """How a message finds the workflow states it belongs to.

    ``lookup(message, attributes)`` returns the value to look for (or ``None`` for "no
    workflow"), and ``maps_to`` names the state field that must equal it. The value is only
    ever compared by equality.
    """

    lookup: Callable[[M, MessageAttributes], str | None]
    maps_to: str


def workflow_id_from_sticky_attributes(
    _message: Message, attributes: MessageAttributes
) -> str | None:
    value = attributes.sticky_attributes.get("workflow_id")
    return value if isinstance(value, str) else None


BY_WORKFLOW_ID: MessageWorkflowMapping[Any, Any] = MessageWorkflowMapping(
    lookup=workflow_id_from_sticky_attributes, maps_to="workflow_id"
)
"""What ``when`` uses without a mapping: the sticky ``workflow_id`` to ``workflow_id``."""

WorkflowHandler: TypeAlias = Callable[
    [Any, S, MessageAttributes], Awaitable["S | Mapping[str, Any] | None"]
]
"""``async def handler(message, state, attributes)``, bound to a workflow instance."""


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

    def started_by(self, message_type: type[M], handler: WorkflowHandler[S]) -> WorkflowMapper[S]:
        self._routes.append(WorkflowRoute(message_type, handler, None))
        return self

    def when(
        self,
        message_type: type[M],
        handler: WorkflowHandler[S],
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


def check_mapping_fields(
    state_type: type[WorkflowState],
    mappings: Sequence[MessageWorkflowMapping[Any, Any]],
    *,
    owner: str,
) -> None:
    """Fail with a clear error if a mapping maps to a field the state does not have, or to
    one that busflow sets itself (``workflow_status``, ``workflow_version``)."""
    for mapping in mappings:
        if mapping.maps_to in ("workflow_status", "workflow_version"):
            raise ConfigurationError(
                f"{owner}: a mapping maps to {mapping.maps_to!r}, which busflow sets itself; "
                "map to a field of your own, or to workflow_id"
            )
        if mapping.maps_to not in state_type.model_fields:
            raise ConfigurationError(
                f"{owner}: a mapping maps to {mapping.maps_to!r}, which is not a field of "
                f"{state_type.__name__}; fields are {sorted(state_type.model_fields)}"
            )


class WorkflowSender(Protocol):
    """What a workflow can do with the bus from inside a handler."""

    async def send(self, message: Message, attributes: MessageAttributes | None = None) -> None: ...

    async def publish(
        self, message: Message, attributes: MessageAttributes | None = None
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

    def complete_workflow(self, **changes: Any) -> dict[str, Any]:
        """Return ``changes`` that also mark the workflow complete; it gets no more messages."""
        return {**changes, "workflow_status": WorkflowStatus.COMPLETE}

    def discard_workflow(self) -> dict[str, Any]:
        """Return a result that drops the handler's changes: nothing is saved."""
        return {"workflow_status": WorkflowStatus.DISCARD}
