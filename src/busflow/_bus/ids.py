"""Message and workflow ids: drawn for messages sent from outside a handler, derived for the
rest, so that running a handler again, or handling a redelivery, makes the same ids."""

from __future__ import annotations

import hashlib
import itertools
import uuid

__all__ = ["MessageIds", "derived_message_id", "workflow_id_for"]

_MESSAGE_IDS = uuid.UUID("5d1f3c1e-2b8a-4c4e-9a57-6f0e4b8c2d31").bytes
"""The namespace of the ids that busflow derives for messages sent by handlers."""
_WORKFLOW_IDS = uuid.UUID("0f6c2b8e-3f4d-4b7a-9c1e-2a5d8e7f9b30").bytes
"""The namespace of the ids of workflows that messages start."""


class MessageIds:
    """Ids for messages sent from outside any handler: a random prefix per bus, then a count.

    As unique as a uuid4 for each message, at a fraction of its cost.
    """

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex
        self._count = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}-{next(self._count)}"


def derived_message_id(incoming: str | None, handler: str, workflow_id: str | None, n: int) -> str:
    """The id of the ``n``-th message that ``handler`` sends while handling ``incoming``."""
    return _uuid5(_MESSAGE_IDS, f"{incoming}/{handler}/{workflow_id}/{n}")


def workflow_id_for(message_id: str, workflow_name: str) -> str:
    """The id of the workflow of ``workflow_name`` that a message starts: the same on every
    delivery of that message."""
    return _uuid5(_WORKFLOW_IDS, f"{workflow_name}/{message_id}")


def _uuid5(namespace: bytes, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))``, without making the ``UUID`` objects."""
    sha1 = hashlib.sha1(namespace + name.encode(), usedforsecurity=False)  # as uuid5 does
    digest = bytearray(sha1.digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
