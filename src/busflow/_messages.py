"""Messages, their names on the wire, and the attributes that travel with them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

from busflow._errors import ConfigurationError

__all__ = ["Message", "MessageAttributes"]


class Message(BaseModel):
    """Base class for commands and events.

    A message is a pydantic model: declare its fields as on any model. On the wire it is its
    ``message_name`` and its JSON body. The name defaults to the module-qualified class
    name; set it to keep it stable when the class moves::

        class OrderPlaced(Message):
            message_name = "shop.OrderPlaced"
            order_id: str
    """

    message_name: ClassVar[str] = "busflow.Message"
    partition_by: ClassVar[str | None] = None
    """The name of the field whose value keeps related messages together: on a partitioned
    transport (``RabbitMQTransport(..., partitions=16)``) every message with one value goes
    to one partition, and so to the same process while it keeps up. Name the field that
    finds the message's workflow (``"order_id"``), on every message type of that workflow.
    ``None``, the default: no partition; the message goes to whichever process is free."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "message_name" not in cls.__dict__:
            cls.message_name = f"{cls.__module__}.{cls.__qualname__}"
        name = cls.__dict__["message_name"]
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(
                f"{cls.__qualname__}.message_name must be a non-empty string, not {name!r}"
            )
        key = cls.partition_by
        if key is not None and key not in cls.model_fields:
            raise ConfigurationError(
                f"{cls.__qualname__}.partition_by is {key!r}, which is not the name of one of "
                f"its fields ({', '.join(cls.model_fields) or 'it has none'}; a field's name, "
                "not its alias)"
            )
        for reserved in ("message_name", "partition_by"):
            if reserved in cls.model_fields:
                raise ConfigurationError(
                    f"{cls.__qualname__} has a field named {reserved!r}, which Message keeps "
                    "for itself; rename the field (an alias keeps its name on the wire)"
                )


@dataclass(frozen=True)
class MessageAttributes:
    """What travels beside a message.

    ``attributes`` belong to this one message. ``sticky_attributes`` are copied onto every
    message that a handler sends or publishes while handling it, so they follow a whole
    conversation; busflow keeps the ``workflow_id`` of the sending workflow there, so that
    replies find their way back. ``message_id`` is the same on every delivery of one message
    (a handler can deduplicate by it); busflow gives each message an id when it is sent, and
    keeps one given here.
    """

    correlation_id: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    sticky_attributes: dict[str, Any] = field(default_factory=dict)
    message_id: str | None = None
