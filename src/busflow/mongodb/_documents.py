"""How a workflow state becomes a MongoDB document, and back.

The persistence converts values itself, at this boundary, so that they round-trip whatever
codec options a client has (PyMongo's defaults are ``tz_aware=False`` and no UUID
representation; mongomock-motor takes no codec options at all).
"""

from __future__ import annotations

import enum
import functools
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import bson
from bson.binary import Binary, UuidRepresentation
from bson.decimal128 import Decimal128
from bson.errors import InvalidDocument
from bson.int64 import Int64
from bson.objectid import ObjectId
from pydantic import ValidationError

from busflow._errors import ConfigurationError, InvalidStateValueError, StoredStateError
from busflow._workflow import WorkflowState, WorkflowStatus

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
"""MongoDB's limit on one document (``maxBsonObjectSize``)."""

ID, VERSION, STATUS, UPDATED_AT, COMPLETED_AT, APPLIED, OUTBOX = (
    "_id",
    "_version",
    "_status",
    "_updated_at",
    "_completed_at",
    "_applied",
    "_outbox",
)
FRAMEWORK_KEYS = {
    "workflow_id": ID,
    "workflow_version": VERSION,
    "workflow_status": STATUS,
    "workflow_applied": APPLIED,
    "workflow_outbox": OUTBOX,
}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def collection_name_for(workflow_name: str, prefix: str = "") -> str:
    """``"shop/order"`` becomes ``shop_order``; ``"Shop/OrderSaga"`` becomes ``shop_order_saga``."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", workflow_name)
    snake = re.sub(r"[^0-9A-Za-z]+", "_", snake).strip("_").lower()
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
        keys = dict(FRAMEWORK_KEYS)
        for name, field in state_type.model_fields.items():
            if name in FRAMEWORK_KEYS:
                continue
            key = field.serialization_alias or field.alias or name
            if key.startswith(("_", "$")) or "." in key or "\x00" in key:
                raise ConfigurationError(
                    f"{state_type.__name__}.{name} would be stored as {key!r}; stored names "
                    "may not start with '_' or '$' (reserved for busflow and MongoDB) or "
                    "contain '.'; give the field another name or alias"
                )
            keys[name] = key
        return cls(state_type, collection, keys)

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
        fields = state.model_dump(mode="python", by_alias=True, exclude=set(FRAMEWORK_KEYS))
        document: dict[str, Any] = {
            ID: state.workflow_id,
            VERSION: version,
            STATUS: state.workflow_status.value,
            UPDATED_AT: now,
            APPLIED: list(state.workflow_applied),
            OUTBOX: [
                encode_value(record.model_dump(), OUTBOX, self.collection, state.workflow_id)
                for record in state.workflow_outbox
            ],
        }
        if state.workflow_status is WorkflowStatus.COMPLETE:
            document[COMPLETED_AT] = now
        for key, value in fields.items():
            document[key] = encode_value(value, key, self.collection, state.workflow_id)
        self._check_size(document, state.workflow_id)
        return document

    def from_document(self, document: Mapping[str, Any]) -> WorkflowState:
        """The state a stored document holds; raises ``StoredStateError`` if it does not fit."""
        workflow_id = document.get(ID)
        names = self.field_names
        data = {
            names.get(key, key): decode_value(value)
            for key, value in document.items()
            if not key.startswith("_")
        }
        data["workflow_id"] = workflow_id
        data["workflow_version"] = document.get(VERSION)
        data["workflow_status"] = document.get(STATUS)
        data["workflow_applied"] = document.get(APPLIED, [])
        data["workflow_outbox"] = decode_value(document.get(OUTBOX, []))
        try:
            return self.state_type.model_validate(data, by_alias=True, by_name=True)
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

    def _check_size(self, document: dict[str, Any], workflow_id: str) -> None:
        try:
            size = len(bson.encode(document))
        except (InvalidDocument, OverflowError) as error:  # encode_value should prevent these
            raise InvalidStateValueError(
                f"{self.collection}: workflow {workflow_id} cannot be stored: {error}"
            ) from error
        if size <= MAX_DOCUMENT_BYTES:
            return
        largest = max(
            (key for key in document if not key.startswith("_")),
            key=lambda key: len(bson.encode({key: document[key]})),
            default=ID,
        )
        raise InvalidStateValueError(
            f"{self.collection}: workflow {workflow_id} would be a {size:,}-byte document, over "
            f"MongoDB's {MAX_DOCUMENT_BYTES:,}-byte limit; its largest field is {largest!r}. "
            "Nothing was written."
        )


def encode_value(value: Any, path: str, collection: str = "", workflow_id: str = "") -> Any:
    """A Python value as BSON can hold it, or ``InvalidStateValueError`` naming ``path``."""
    if value is None or isinstance(value, (str, bool, float, bytes, ObjectId, Decimal128, Binary)):
        return value
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise _invalid(collection, workflow_id, path, f"{value} does not fit in 64 bits")
        return value
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, Decimal):
        try:
            return Decimal128(value)
        except Exception as error:
            raise _invalid(
                collection, workflow_id, path, f"{value} is not a Decimal128: {error}"
            ) from error
    if isinstance(value, uuid.UUID):
        return Binary.from_uuid(value, UuidRepresentation.STANDARD)
    if isinstance(value, enum.Enum):
        return encode_value(value.value, path, collection, workflow_id)
    if isinstance(value, Mapping):
        encoded = {}
        for key, item in value.items():
            name = _key_text(key)
            if name is None or name.startswith("$") or "\x00" in name:
                raise _invalid(
                    collection,
                    workflow_id,
                    f"{path}[{key!r}]",
                    "keys must be strings, numbers or UUIDs, and not start with '$'",
                )
            encoded[name] = encode_value(item, f"{path}.{name}", collection, workflow_id)
        return encoded
    if isinstance(value, (list, tuple, set, frozenset)):
        return [
            encode_value(item, f"{path}[{n}]", collection, workflow_id)
            for n, item in enumerate(value)
        ]
    raise _invalid(
        collection, workflow_id, path, f"a {type(value).__name__} cannot be stored in MongoDB"
    )


def _key_text(key: object) -> str | None:
    """A dict key as BSON holds it: a string. Numbers, UUIDs and enums become their text,
    which pydantic turns back into the key type the model declares."""
    if isinstance(key, enum.Enum):
        key = key.value
    if isinstance(key, str):
        return key
    if isinstance(key, int | float | Decimal | uuid.UUID) and not isinstance(key, bool):
        return str(key)
    return None


def decode_value(value: Any) -> Any:
    """A stored value as the state model expects it, whatever the client's codec options."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, Decimal128):
        return value.to_decimal()
    if isinstance(value, Binary):
        if value.subtype == 4:
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


def _invalid(collection: str, workflow_id: str, path: str, why: str) -> InvalidStateValueError:
    where = f"{collection}: workflow {workflow_id}" if collection else "a lookup value"
    return InvalidStateValueError(f"{where}: field {path!r}: {why}. Nothing was written.")
