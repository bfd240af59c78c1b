"""Messages to deliver later, in the ``busflow_timeouts`` collection.

One document per message, ``_id`` its message id, readable in the mongo shell::

    {_id, due_at, name, body, correlation_id, attributes, sticky_attributes, publish,
     partition_key, workflow_name, workflow_id, lease_owner, leased_until}

An index on ``due_at`` serves the poll, which is one ``findAndModify`` per message claimed
(and one that finds nothing when none is due), however many are waiting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import BulkWriteError

from busflow._timeouts import ClaimedMessage, ScheduledMessage
from busflow._transport import TransportMessage

__all__ = ["TIMEOUTS_COLLECTION", "ScheduledMessages"]

TIMEOUTS_COLLECTION = "busflow_timeouts"
DUE_INDEX = "busflow_due_at"
_NEVER = datetime(1970, 1, 1, tzinfo=UTC)
_DUPLICATE_KEY = 11000


def _to_milliseconds(moment: datetime) -> datetime:
    """As BSON keeps it, so that a lease read back compares equal."""
    return moment.astimezone(UTC).replace(microsecond=moment.microsecond // 1000 * 1000)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def to_document(scheduled: ScheduledMessage) -> dict[str, Any]:
    message = scheduled.message
    return {
        "_id": message.message_id,
        "due_at": _to_milliseconds(scheduled.due_at),
        "name": message.name,
        "body": message.body.decode(),
        "correlation_id": message.correlation_id,
        "attributes": dict(message.attributes),
        "sticky_attributes": dict(message.sticky_attributes),
        "publish": scheduled.publish,
        "partition_key": message.partition_key,
        "workflow_name": scheduled.workflow_name,
        "workflow_id": scheduled.workflow_id,
        "lease_owner": None,
        "leased_until": _NEVER,
    }


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def from_document(document: Mapping[str, Any]) -> ScheduledMessage:
    message = TransportMessage(
        str(document["name"]),
        str(document["_id"]),
        str(document["body"]).encode(),
        document.get("correlation_id"),
        dict(document.get("attributes") or {}),
        dict(document.get("sticky_attributes") or {}),
        partition_key=_text_or_none(document.get("partition_key")),
    )
    return ScheduledMessage(
        message=message,
        publish=bool(document.get("publish")),
        due_at=_aware(document["due_at"]),
        workflow_name=document.get("workflow_name"),
        workflow_id=document.get("workflow_id"),
    )


class ScheduledMessages:
    """``MongoPersistence``'s ``TimeoutStore``, on one collection."""

    def __init__(self, collection: Any) -> None:
        self._collection = collection
        self._indexed = False

    async def _ensure_index(self) -> None:
        if not self._indexed:
            await self._collection.create_index([("due_at", 1)], name=DUE_INDEX)
            self._indexed = True

    async def schedule(self, messages: Sequence[ScheduledMessage]) -> None:
        if not messages:
            return
        await self._ensure_index()
        try:
            await self._collection.insert_many(
                [to_document(each) for each in messages], ordered=False
            )
        except BulkWriteError as error:
            others = [
                problem
                for problem in error.details.get("writeErrors", [])
                if problem.get("code") != _DUPLICATE_KEY
            ]
            if others:
                raise  # one stored already under its id is scheduled already: that is fine

    async def claim(
        self, now: datetime, owner: str, lease: timedelta, limit: int
    ) -> list[ClaimedMessage]:
        await self._ensure_index()
        now = _to_milliseconds(now)
        leased_until = _to_milliseconds(now + lease)
        claimed: list[ClaimedMessage] = []
        while len(claimed) < limit:
            document = await self._collection.find_one_and_update(
                {"due_at": {"$lte": now}, "leased_until": {"$lte": now}},
                {"$set": {"lease_owner": owner, "leased_until": leased_until}},
                sort=[("due_at", 1)],
                return_document=ReturnDocument.AFTER,
            )
            if document is None:
                break
            claimed.append(ClaimedMessage(from_document(document), owner, leased_until))
        return claimed

    async def remove(self, claimed: ClaimedMessage) -> None:
        await self._collection.delete_one(
            {
                "_id": claimed.scheduled.message.message_id,
                "lease_owner": claimed.owner,
                "leased_until": claimed.leased_until,
            }
        )
