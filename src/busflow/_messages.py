"""Messages and the attributes that travel with them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

__all__ = ["Message", "MessageAttributes"]


class Message(BaseModel):
    """Base class for commands and events.

    A message is a pydantic model: declare its fields as on any model. The bus routes a
    message by its Python type.
    """


@dataclass(frozen=True)
class MessageAttributes:
    """What travels beside a message.

    ``attributes`` belong to this one message. ``sticky_attributes`` are copied onto every
    message that a handler sends or publishes while handling it, so they follow a whole
    conversation; busflow keeps the ``workflow_id`` of the sending workflow there, so that
    replies find their way back.
    """

    correlation_id: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    sticky_attributes: dict[str, Any] = field(default_factory=dict)
