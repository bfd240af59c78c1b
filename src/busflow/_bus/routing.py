"""Routing by message name: which subscribers handle a message, and how it is encoded.

``Routes`` is built once, at ``Bus.initialize``, from the registered workflows and handlers.
It also owns the codec: a message travels as its ``message_name`` and its pydantic JSON, and
is decoded back to the type registered under that name.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

from pydantic import ValidationError

from busflow._errors import ConfigurationError, MessageDecodeError
from busflow._messages import Message, MessageAttributes
from busflow._transport import TransportMessage
from busflow._workflow import (
    MessageWorkflowMapping,
    StateTypesByName,
    Workflow,
    WorkflowMapper,
    WorkflowRoute,
    WorkflowState,
)

__all__ = [
    "MessageHandler",
    "PlainSubscriber",
    "Routes",
    "Subscriber",
    "WorkflowSubscriber",
]

S = TypeVar("S", bound=WorkflowState)

MessageHandler: TypeAlias = Callable[[Any, MessageAttributes], Awaitable[None]]
"""A plain handler: ``async def handler(message, attributes)``."""


@dataclass(frozen=True)
class PlainSubscriber:
    handler: MessageHandler

    @functools.cached_property
    def name(self) -> str:
        return getattr(self.handler, "__qualname__", None) or repr(self.handler)


@dataclass(frozen=True)
class WorkflowSubscriber(Generic[S]):
    workflow: Workflow[S]
    state_type: type[S]
    route: WorkflowRoute[S]
    mapped_fields: tuple[str, ...]
    """Every state field that one of this workflow's mappings looks up."""

    @functools.cached_property
    def name(self) -> str:
        handler_name = getattr(self.route.handler, "__name__", None) or repr(self.route.handler)
        return f"{type(self.workflow).__name__}.{handler_name}"


Subscriber: TypeAlias = PlainSubscriber | WorkflowSubscriber[Any]


@dataclass(frozen=True)
class RegisteredWorkflow:
    """A workflow's state type and mappings, for the persistence to prepare."""

    state_type: type[WorkflowState]
    mappings: list[MessageWorkflowMapping[Any, Any]]


class Routes:
    """Subscribers by message name, and the message type behind each name."""

    def __init__(
        self,
        workflows: Sequence[Workflow[Any]],
        handlers: Sequence[tuple[type[Message], MessageHandler]],
    ) -> None:
        self._types: dict[str, type[Message]] = {}
        self._subscribers: dict[str, list[Subscriber]] = {}
        self.workflows: list[RegisteredWorkflow] = []
        for message_type, handler in handlers:
            self._add(message_type, PlainSubscriber(handler))
        names = StateTypesByName()
        seen_states: set[type[WorkflowState]] = set()
        for workflow in workflows:
            mapper: WorkflowMapper[Any] = WorkflowMapper(type(workflow).__name__)
            workflow.configure_workflow(mapper)
            mapper.validate()
            state_type = mapper.state_type
            if state_type in seen_states:
                raise ConfigurationError(
                    f"{state_type.__name__} is the state of more than one registered workflow "
                    "(or one workflow is registered twice); each workflow needs its own state"
                )
            seen_states.add(state_type)
            names.add(state_type, owner=f"workflow {type(workflow).__name__}")
            mappings = mapper.mappings
            self.workflows.append(RegisteredWorkflow(state_type, mappings))
            fields = tuple(dict.fromkeys(mapping.maps_to for mapping in mappings))
            for route in mapper.routes:
                self._add(
                    route.message_type, WorkflowSubscriber(workflow, state_type, route, fields)
                )

    @functools.cached_property
    def names(self) -> frozenset[str]:
        """The names of every message that something here handles."""
        return frozenset(self._subscribers)

    def subscribers(self, name: str) -> Sequence[Subscriber]:
        return self._subscribers.get(name, ())

    def encode(
        self, message: Message, attributes: MessageAttributes, message_id: str
    ) -> TransportMessage:
        message_type = type(message)
        name = message_type.message_name
        known = self._types.get(name)
        if known is not None and known is not message_type:
            raise ConfigurationError(
                f"cannot send {message_type.__qualname__}: its message_name {name!r} belongs "
                f"to {known.__qualname__}, which handlers here expect; give one of them "
                "another message_name"
            )
        return TransportMessage(
            name,
            message_id,
            message.__pydantic_serializer__.to_json(message),
            attributes.correlation_id,
            attributes.attributes,
            attributes.sticky_attributes,
            partition_key=_partition_value(message),
        )

    def decode(self, message: TransportMessage) -> tuple[Message, MessageAttributes]:
        message_type = self._types.get(message.name)
        if message_type is None:
            raise MessageDecodeError(
                f"no handler here knows the message name {message.name!r} "
                f"(message id {message.message_id})"
            )
        try:
            # the model's validator itself: model_validate_json's wrapper costs as much again
            decoded: Message = message_type.__pydantic_validator__.validate_json(message.body)
        except ValidationError as error:
            raise MessageDecodeError(
                f"the body of {message.name} (message id {message.message_id}) does not fit "
                f"{message_type.__qualname__}: {error.error_count()} error(s), first at "
                f"{_location(error)}"
            ) from None
        # Copies, which a handler may change; most messages carry no attributes of their own.
        plain, sticky = message.attributes, message.sticky_attributes
        attributes = MessageAttributes(
            message.correlation_id,
            dict(plain) if plain else {},
            dict(sticky) if sticky else {},
            message.message_id,
        )
        return decoded, attributes

    def _add(self, message_type: type[Message], subscriber: Subscriber) -> None:
        if not (isinstance(message_type, type) and issubclass(message_type, Message)):
            raise ConfigurationError(f"{message_type!r} is not a busflow Message subclass")
        name = message_type.message_name
        known = self._types.setdefault(name, message_type)
        if known is not message_type:
            raise ConfigurationError(
                f"{known.__qualname__} and {message_type.__qualname__} both have the "
                f"message_name {name!r}; give one of them another message_name"
            )
        self._subscribers.setdefault(name, []).append(subscriber)


def _location(error: ValidationError) -> str:
    first: Mapping[str, Any] = error.errors(include_input=False)[0]
    return json.dumps(".".join(str(part) for part in first["loc"]) or "the top level")


def _partition_value(message: Message) -> str | None:
    """The value of the message's ``partition_by`` field as it is on the wire (an enum by its
    value, a number as JSON writes it), as text; ``None`` without one."""
    key = type(message).partition_by
    if key is None:
        return None
    value = message.__pydantic_serializer__.to_python(message, mode="json", include={key})[key]
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
