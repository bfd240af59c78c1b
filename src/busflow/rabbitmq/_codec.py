"""A ``TransportMessage`` as an AMQP message, and back; a ``DeadLetter``'s headers.

On the wire a message is its pydantic JSON body, with the AMQP properties ``type`` (its
name), ``message_id`` and ``correlation_id``, and these headers, each only when it has
something to say:

- ``busflow-attempt``: the delivery attempt, from 1;
- ``busflow-completed-by``: the handlers that finished on an earlier attempt;
- ``busflow-attributes``, ``busflow-sticky-attributes``: the attributes, as JSON text;
- ``busflow-partition-key``: the value of the message's partition key field.

The routing key is not here: the transport sets it, from the partition key.

A dead letter adds ``busflow-error-type``, ``busflow-error-text``, ``busflow-traceback``,
``busflow-attempts`` and ``busflow-handler``, and its ``timestamp`` says when it died.
Decoding never raises: what does not fit is reported, and the transport dead-letters it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import pydantic_core
from aio_pika import DeliveryMode
from aio_pika import Message as AmqpMessage
from aio_pika.abc import AbstractMessage

from busflow._transport import DeadLetter, TransportMessage

__all__ = [
    "DEAD_LETTER_HEADERS",
    "decode",
    "decode_dead_letter",
    "encode",
    "encode_dead_letter",
]

ATTEMPT = "busflow-attempt"
COMPLETED_BY = "busflow-completed-by"
ATTRIBUTES = "busflow-attributes"
STICKY_ATTRIBUTES = "busflow-sticky-attributes"
PARTITION_KEY = "busflow-partition-key"

ERROR_TYPE = "busflow-error-type"
ERROR_TEXT = "busflow-error-text"
TRACEBACK = "busflow-traceback"
ATTEMPTS = "busflow-attempts"
HANDLER = "busflow-handler"
DEAD_LETTER_HEADERS = (ERROR_TYPE, ERROR_TEXT, TRACEBACK, ATTEMPTS, HANDLER)

TEXT_LIMIT = 4_000
TRACEBACK_LIMIT = 16_000
"""Characters kept of an error's text and traceback: headers must fit in one AMQP frame."""

_NOTHING: Mapping[str, Any] = MappingProxyType({})


def encode(message: TransportMessage, headers: Mapping[str, Any] = _NOTHING) -> AmqpMessage:
    """The persistent AMQP message for ``message``, with ``headers`` added."""
    amqp_headers: dict[str, Any] = {ATTEMPT: message.attempt}
    if message.completed_by:
        amqp_headers[COMPLETED_BY] = list(message.completed_by)
    if message.attributes:
        amqp_headers[ATTRIBUTES] = _json(message.attributes)
    if message.sticky_attributes:
        amqp_headers[STICKY_ATTRIBUTES] = _json(message.sticky_attributes)
    if message.partition_key is not None:
        amqp_headers[PARTITION_KEY] = message.partition_key
    amqp_headers.update(headers)
    return AmqpMessage(
        message.body,
        headers=amqp_headers,
        content_type="application/json",
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        type=message.name,
    )


def decode(amqp: AbstractMessage) -> tuple[TransportMessage, list[str]]:
    """The message, as far as it could be read, and what could not be read of it."""
    problems: list[str] = []
    headers = amqp.headers or {}
    name = amqp.type or ""
    if not name:
        problems.append("it has no message name (its AMQP type property is empty)")
    attempt = headers.get(ATTEMPT, 1)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        problems.append(f"its {ATTEMPT} header is {attempt!r}, not a whole number from 1")
        attempt = 1
    completed_by: tuple[str, ...] = ()
    listed = headers.get(COMPLETED_BY, [])
    if isinstance(listed, list) and all(isinstance(each, str) for each in listed):
        completed_by = tuple(str(each) for each in listed)
    else:
        problems.append(f"its {COMPLETED_BY} header is not a list of handler names")
    partition_key = headers.get(PARTITION_KEY)
    if not isinstance(partition_key, str):
        partition_key = None  # routing is done, and retries go through the endpoint queue
    message = TransportMessage(
        name=name,
        message_id=amqp.message_id or str(uuid.uuid4()),
        body=amqp.body,
        correlation_id=amqp.correlation_id,
        attributes=_attributes(headers, ATTRIBUTES, problems),
        sticky_attributes=_attributes(headers, STICKY_ATTRIBUTES, problems),
        attempt=attempt,
        completed_by=completed_by,
        partition_key=partition_key,
    )
    return message, problems


def encode_dead_letter(dead_letter: DeadLetter) -> AmqpMessage:
    amqp = encode(
        dead_letter.message,
        {
            ERROR_TYPE: dead_letter.error_type,
            ERROR_TEXT: _shortened(dead_letter.error_text, TEXT_LIMIT),
            TRACEBACK: _shortened(dead_letter.traceback, TRACEBACK_LIMIT),
            ATTEMPTS: dead_letter.attempts,
            HANDLER: dead_letter.handler,
        },
    )
    amqp.timestamp = datetime.now(UTC)
    return amqp


def decode_dead_letter(amqp: AbstractMessage) -> DeadLetter:
    """A dead letter read back; one that another program put there reads as best it can."""
    message, problems = decode(amqp)
    headers = amqp.headers or {}
    attempts = headers.get(ATTEMPTS)
    return DeadLetter(
        message=message,
        error_type=str(headers.get(ERROR_TYPE, "unknown")),
        error_text=str(headers.get(ERROR_TEXT, "; ".join(problems) or "unknown")),
        traceback=str(headers.get(TRACEBACK, "")),
        attempts=attempts if isinstance(attempts, int) else message.attempt,
        handler=str(headers.get(HANDLER, "unknown")),
    )


def _json(attributes: Mapping[str, Any]) -> str:
    return pydantic_core.to_json(attributes).decode()


def _attributes(headers: Mapping[str, Any], header: str, problems: list[str]) -> dict[str, Any]:
    text = headers.get(header)
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        value = None
    if not isinstance(value, dict):
        problems.append(f"its {header} header is not a JSON object")
        return {}
    return value


def _shortened(text: str, limit: int) -> str:
    """The end of a long text (a traceback ends with its error), marked as shortened."""
    if len(text) <= limit:
        return text
    return f"[{len(text) - limit} characters left out]...{text[-limit:]}"
