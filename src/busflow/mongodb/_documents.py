"""How a workflow state becomes a MongoDB document, and back.

What a state may hold, and how each value is kept, is defined once in ``busflow._values``, for
every persistence; this module puts kept values into BSON's types and takes them out again. It
converts values itself, at this boundary, so that they round-trip whatever codec options a
client has (PyMongo's defaults are ``tz_aware=False`` and no UUID representation;
mongomock-motor takes no codec options at all).
"""

from __future__ import annotations

import functools
import re
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from bson.binary import UUID_SUBTYPE, Binary, UuidRepresentation
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.objectid import ObjectId
from pydantic import ValidationError

from busflow._errors import ConfigurationError, StoredStateError
from busflow._values import (
    COMPLETED_AT,
    FRAMEWORK_KEYS,
    ID,
    RECORD_KEYS,
    STATUS,
    UPDATED_AT,
    VERSION,
    store_state,
    stored_keys,
)
from busflow._workflow import WorkflowState, WorkflowStatus, state_from
from busflow.mongodb._decimal128 import from_decimal128, to_decimal128

__all__ = [
    "COMPLETED_AT",
    "ID",
    "STATUS",
    "UPDATED_AT",
    "VERSION",
    "StateLayout",
    "collection_name_for",
    "decode_value",
    "to_bson",
]


def collection_name_for(workflow_name: str, prefix: str = "") -> str:
    """``"shop/order"`` becomes ``shop_order`` and ``"Shop/OrderSaga"`` ``shop_order_saga``.

    Letters and digits of every script are kept, as MongoDB allows them: ``"billing/заказ"``
    becomes ``billing_заказ`` and ``"billing/订单"`` ``billing_订单``. Names that still meet
    (``"shop/order"`` and ``"shop-order"``) are told apart by the registry at startup.
    """
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", unicodedata.normalize("NFC", workflow_name))
    snake = re.sub(r"[\W_]+", "_", snake).strip("_").lower()
    if not snake:
        raise ConfigurationError(f"workflow_name {workflow_name!r} gives no collection name")
    return f"{prefix}{snake}"


@dataclass(frozen=True)
class StateLayout:
    """Where each field of one state type lives in its collection's documents."""

    state_type: type[WorkflowState]
    collection: str
    keys: dict[str, str]
    """Python field name to stored key (the field's alias, if it has one)."""

    @classmethod
    def of(cls, state_type: type[WorkflowState], collection: str) -> StateLayout:
        keys = stored_keys(state_type)
        for name, key in keys.items():
            if (
                name not in FRAMEWORK_KEYS
                and name not in RECORD_KEYS
                and (key.startswith(("_", "$")) or "." in key or "\x00" in key)
            ):
                raise ConfigurationError(
                    f"{state_type.__name__}.{name} would be stored as {key!r}; stored names "
                    "may not start with '_' or '$' (reserved for busflow and MongoDB) or "
                    "contain '.'; give the field another name or alias"
                )
        return cls(state_type, collection, dict(keys))

    @functools.cached_property
    def field_names(self) -> dict[str, str]:
        """Stored key to Python field name."""
        return {key: name for name, key in self.keys.items()}

    def key_for(self, field_name: str) -> str:
        try:
            return self.keys[field_name]
        except KeyError:
            raise ConfigurationError(
                f"{self.collection}: {field_name!r} is not a field of "
                f"{self.state_type.__name__}; fields are {sorted(self.keys)}"
            ) from None

    def to_document(self, state: WorkflowState, *, version: int, now: datetime) -> dict[str, Any]:
        """The document to store for ``state`` at ``version``; raises before any write."""
        return self.to_stored(state, version=version, now=now)[0]

    def to_stored(
        self, state: WorkflowState, *, version: int, now: datetime
    ) -> tuple[dict[str, Any], WorkflowState]:
        """The document to store for ``state`` at ``version``, and the state it reads back as;
        raises before any write."""
        stored = store_state(state, version=version, where=self.collection)
        document: dict[str, Any] = {
            ID: state.workflow_id,
            VERSION: version,
            STATUS: state.workflow_status.value,
            UPDATED_AT: now,
        }
        if state.workflow_status is WorkflowStatus.COMPLETE:
            document[COMPLETED_AT] = now
        for key, value in stored.values.items():
            document[key] = to_bson(value)
        return document, stored.read_back

    def from_document(self, document: Mapping[str, Any]) -> WorkflowState:
        """The state a stored document holds; raises ``StoredStateError`` if it does not fit."""
        workflow_id = document.get(ID)
        problem = _framework_problem(document)
        if problem is not None:
            raise StoredStateError(
                f"{self.collection}: the document with _id {workflow_id!r} {problem}; it was "
                "left as it is. Fix the document, then deliver the message again.",
                collection=self.collection,
                workflow_id=workflow_id,
            )
        names = self.field_names
        data = {
            names.get(key, key): decode_value(value)
            for key, value in document.items()
            if not key.startswith("_")
        }
        data["workflow_id"] = workflow_id
        data["workflow_version"] = document.get(VERSION)
        data["workflow_status"] = document.get(STATUS)
        for name, key in RECORD_KEYS.items():
            if key in document:
                data[name] = decode_value(document[key])
        try:
            return state_from(self.state_type, data, by_alias=True)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in problem['loc']) or '(document)'}: "
                f"{problem['msg']}"
                for problem in error.errors()
            )
            raise StoredStateError(
                f"{self.collection}: the document with _id {workflow_id!r} does not fit "
                f"{self.state_type.__name__} ({problems}); it was left as it is. Migrate the "
                "document or give the model a default for the field.",
                collection=self.collection,
                workflow_id=workflow_id,
            ) from error


_STORED_STATUSES = (WorkflowStatus.RUNNING.value, WorkflowStatus.COMPLETE.value)


def _framework_problem(document: Mapping[str, Any]) -> str | None:
    """What is wrong with the keys busflow keeps in a document, if anything.

    A ``_version`` that is not a whole number from 1 would never match the version a save
    expects, so the save would be retried as a lost race for ever; it is reported instead.
    """
    if VERSION not in document:
        return f"has no {VERSION}; busflow writes a whole number from 1 there"
    version = document[VERSION]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        return (
            f"has {VERSION} {version!r}, of type {type(version).__name__}; busflow writes a "
            "whole number from 1 there"
        )
    status = document.get(STATUS)
    if status not in _STORED_STATUSES:
        return (
            f"has {STATUS} {status!r}; busflow writes {' or '.join(map(repr, _STORED_STATUSES))} "
            "there"
        )
    return None


_AS_IN_BSON: Final = frozenset({str, int, float, bool, type(None), datetime, bytes, ObjectId})
"""Types of kept values that BSON holds as they are (``to_bson`` returns them unchanged)."""
_AS_DECODED: Final = frozenset({str, int, float, bool, type(None), bytes, uuid.UUID, ObjectId})
"""Types of decoded values that a state takes as they are (``decode_value`` returns them
unchanged); a subclass, such as bson's ``Int64`` or ``Binary``, is not one of them."""


def to_bson(value: Any) -> Any:
    """A value as ``busflow._values`` keeps it, in BSON's types: a ``Decimal`` as Decimal128,
    a ``UUID`` as a standard (subtype 4) binary."""
    kind = type(value)
    # Items of the most common types are taken as they are without a call for each.
    if kind is dict:
        return {
            key: item if type(item) in _AS_IN_BSON else to_bson(item) for key, item in value.items()
        }
    if kind is list:
        return [item if type(item) in _AS_IN_BSON else to_bson(item) for item in value]
    if kind is Decimal:
        return to_decimal128(value)
    if kind is uuid.UUID:
        return Binary(value.bytes, UUID_SUBTYPE)  # what Binary.from_uuid makes, a call shorter
    return value


def decode_value(value: Any) -> Any:
    """A stored value as the state model expects it, whatever the client's codec options."""
    kind = type(value)
    if kind in _AS_DECODED:
        return value
    # Items of the most common types are taken as they are without a call for each.
    if kind is dict:
        return {
            key: item if type(item) in _AS_DECODED else decode_value(item)
            for key, item in value.items()
        }
    if kind is list:
        return [item if type(item) in _AS_DECODED else decode_value(item) for item in value]
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, Decimal128):
        return from_decimal128(value)
    if isinstance(value, Binary):
        if value.subtype == UUID_SUBTYPE:
            return value.as_uuid(UuidRepresentation.STANDARD)
        if value.subtype == 0:
            return bytes(value)
        return value
    if isinstance(value, Int64):
        return int(value)
    if isinstance(value, dict):
        return {key: decode_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_value(item) for item in value]
    return value
