"""What a workflow state may hold, and how every persistence keeps it.

One definition, used by ``InMemoryPersistence`` and ``MongoPersistence`` alike, so that a state
one of them accepts the other accepts too, and both give back the same values. The rules are
MongoDB's:

- What BSON holds natively is kept as it is: ``str``, ``int`` (64-bit), ``float``, ``bool``,
  ``None``, ``bytes``, ``Decimal`` (as far as Decimal128 holds it exactly), ``UUID``,
  ``ObjectId``, lists, and dicts with string keys.
- A ``datetime`` is kept in UTC to the millisecond (a naive one is taken to be UTC) and a
  ``date`` as midnight UTC. An enum is kept as its value, a tuple or set as a list, and a dict
  key that is not a string as its text.
- Any other value pydantic can serialize is kept as its JSON-mode value (a ``timedelta`` as
  ``"PT1S"``, an IP address, URL or path as its text), which the model turns back into its type.
- Every state is read back through its model before it is kept, and what would not come back
  equal is refused with ``InvalidStateValueError`` naming the field, before anything is written:
  text with a lone surrogate, dict keys that collide once stored (``1`` and ``"1"``), keys that
  start with ``$`` or hold ``.`` or NUL, integers beyond 64 bits, decimals beyond Decimal128,
  datetimes beyond the years 1 to 9999 in UTC, nesting deeper than 100 levels, a document over
  16 MiB, and values that would come back as something else (a tuple in a field typed ``Any``
  comes back a list).

Lookup values are kept by the same rules, and compared as MongoDB compares: numbers by value
whatever their type, any other value only with values of its own type.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import uuid
from collections.abc import Hashable, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, DecimalException, Inexact, InvalidOperation, Overflow
from types import UnionType
from typing import Any, Final, NamedTuple, Union, get_args, get_origin

from bson.binary import Binary, UuidRepresentation
from bson.decimal128 import Decimal128, create_decimal128_context
from bson.objectid import ObjectId
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from busflow._errors import InvalidStateValueError
from busflow._workflow import WorkflowState, WorkflowStatus, state_from

__all__ = [
    "APPLIED",
    "COMPLETED_AT",
    "FRAMEWORK_KEYS",
    "ID",
    "MAX_DOCUMENT_BYTES",
    "MAX_NESTING",
    "ORIGINATOR",
    "OUTBOX",
    "RECORD_KEYS",
    "STATUS",
    "UPDATED_AT",
    "VERSION",
    "StoredScalar",
    "StoredState",
    "compares_plainly",
    "lookup_key",
    "store_state",
    "stored_keys",
    "stored_scalar",
]

MAX_DOCUMENT_BYTES: Final = 16 * 1024 * 1024
"""MongoDB's limit on one document (``maxBsonObjectSize``)."""
MAX_NESTING: Final = 100
"""MongoDB's limit on nesting: the document is one level, and each dict or list in it one more."""

ID, VERSION, STATUS, UPDATED_AT, COMPLETED_AT, APPLIED, OUTBOX, ORIGINATOR = (
    "_id",
    "_version",
    "_status",
    "_updated_at",
    "_completed_at",
    "_applied",
    "_outbox",
    "_originator",
)
"""The keys busflow keeps beside a state's own fields."""
FRAMEWORK_KEYS: Final = {"workflow_id": ID, "workflow_version": VERSION, "workflow_status": STATUS}
"""Fields that each persistence keeps itself, beside the state's own."""
RECORD_KEYS: Final = {
    "workflow_applied": APPLIED,
    "workflow_outbox": OUTBOX,
    "workflow_originator": ORIGINATOR,
}
"""The bus's record of what messages did, and of the workflow that started this one: kept and
checked like the state's own fields, under keys of busflow's (see "Exactly-once effects" and
"Replies between workflows" in the README)."""

StoredScalar = str | int | float | Decimal | uuid.UUID | datetime | bytes | ObjectId
"""A single value as it is kept (``bool`` is an ``int``)."""

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_DECIMAL128 = create_decimal128_context()
"""Decimal128's precision and exponents, refusing what it would round (as ``Decimal128()`` does)."""
_DECIMAL128.traps.update({InvalidOperation: True, Overflow: True, Inexact: True})
_NUMBER_TYPES: Final = frozenset({int, float, Decimal})
_PLAIN_TYPES: Final = frozenset({str, int, float, Decimal, uuid.UUID, datetime, bytes, type(None)})
_FIXED_SIZES: Final[dict[type, int]] = {float: 8, bool: 1, type(None): 0}
"""The size in BSON of a value of these types, which are kept as they are."""
_MISSING: Final[Any] = object()
"""No JSON-mode value at hand (see ``_Walk.value``)."""


class StoredState(NamedTuple):
    """A state as every persistence keeps it."""

    values: dict[str, Any]
    """The state's own fields, by stored key, as kept (the framework's fields aside)."""
    read_back: WorkflowState
    """The state as it will be read back, at its new version."""
    size: int
    """The size in bytes of the BSON document that ``MongoPersistence`` writes for it."""


def store_state(state: WorkflowState, *, version: int, where: str) -> StoredState:
    """``state`` as it is kept at ``version``, checked against the rules in this module.

    One pass over the state's fields converts and checks them; the result is then read back
    through the model. Raises ``InvalidStateValueError`` naming ``where`` (a collection or
    workflow name), the workflow and the field when a value cannot be kept as it is.
    """
    state_type = type(state)
    fields = _stored_fields(state_type)
    walk = _Walk()
    walk.size = _framework_size(state, version, where)
    values: dict[str, Any] = {}
    by_name: dict[str, Any] = {}
    converted: list[str] = []
    largest, largest_size = "workflow_id", 0
    for key, value in state.model_dump(by_alias=True).items():
        key = RECORD_KEYS.get(key, key)
        field = fields.get(key)
        if field is None:
            if key in FRAMEWORK_KEYS:
                continue
            field = (key, None)  # an extra field, of a model with extra="allow"
        name, key_size = field
        before = walk.size
        walk.exact = True
        try:
            walk.size += _key_size(key) if key_size is None else key_size
            try:
                stored = walk.value(value, _MISSING, 2)
            except _NeedsJsonError as needs:
                walk.size = before + (key_size or 0)
                stored = walk.value(value, _json_field(state, name, key, needs), 2)
        except _RefusalError as refusal:
            raise refusal.error(where, state.workflow_id, name) from None
        values[key] = by_name[name] = stored
        if not walk.exact:
            converted.append(name)
        if walk.size - before > largest_size:
            largest, largest_size = name, walk.size - before
    if walk.size > MAX_DOCUMENT_BYTES:
        raise _RefusalError(
            f"the state would be a {walk.size:,}-byte document, over MongoDB's "
            f"{MAX_DOCUMENT_BYTES:,}-byte limit, and this is its largest field; keep large "
            "data elsewhere and store a reference to it"
        ).error(where, state.workflow_id, largest)
    by_name["workflow_id"] = state.workflow_id
    by_name["workflow_version"] = version
    by_name["workflow_status"] = state.workflow_status
    read_back = _read_back(state_type, by_name, where, state.workflow_id)
    for name in converted:
        _check_comes_back(getattr(read_back, name), getattr(state, name), where, state, name)
    return StoredState(values, read_back, walk.size)


@functools.cache
def stored_keys(state_type: type[WorkflowState]) -> Mapping[str, str]:
    """Field name to the key it is stored under: its (serialization) alias, else its name."""
    keys = {**FRAMEWORK_KEYS, **RECORD_KEYS}
    for name, field in state_type.model_fields.items():
        if name not in keys:
            keys[name] = field.serialization_alias or field.alias or name
    return keys


@functools.cache
def _stored_fields(state_type: type[WorkflowState]) -> dict[str, tuple[str, int | None]]:
    """Stored key to field name and the size the key adds (``None`` for a key MongoDB cannot
    keep, refused at each save), for the state's own fields."""
    fields: dict[str, tuple[str, int | None]] = {}
    for name, key in stored_keys(state_type).items():
        if name not in FRAMEWORK_KEYS:
            try:
                fields[key] = (name, _key_size(key))
            except _RefusalError:
                fields[key] = (name, None)
    return fields


def stored_scalar(value: object) -> StoredScalar:
    """A lookup value as a stored value is kept, so that the two compare equal.

    Raises ``ValueError`` saying why when no stored scalar can equal ``value``: it is a dict,
    list or model, or it breaks a rule of this module.
    """
    if type(value) is str and value.isascii():
        return value  # the most common lookup value, kept as it is
    if isinstance(value, Mapping | list | tuple | set | frozenset | BaseModel):
        raise ValueError(
            f"a {type(value).__name__}; lookups must return a scalar such as a str or None"
        )
    walk = _Walk()
    try:
        try:
            stored = walk.value(value, _MISSING, 2)
        except _NeedsJsonError as needs:
            stored = walk.value(value, _json_value(value, needs), 2)
    except _RefusalError as refusal:
        raise ValueError(f"a {type(value).__name__} that cannot be stored: {refusal.why}") from None
    if stored is None or isinstance(stored, dict | list):
        raise ValueError(
            f"a {type(value).__name__} whose stored form is not a scalar; lookups must return "
            "a scalar such as a str or None"
        )
    return stored  # type: ignore[no-any-return]  # a scalar, as checked above


def lookup_key(value: object) -> Hashable:
    """What a lookup compares, as MongoDB compares it.

    Values are compared as they are kept (an enum as its value, a datetime in UTC to the
    millisecond); numbers by value whether ``int``, ``float`` or ``Decimal``, and any other
    value only with values of its own type, so ``True`` never equals ``1``. A value that no
    lookup can match, such as a list, gets a key equal to nothing.
    """
    kind = type(value)
    if kind is str:
        return (str, value)
    if kind in _NUMBER_TYPES:
        return (Decimal, value)
    try:
        stored = stored_scalar(value)
    except ValueError:
        return object()
    kind = type(stored)
    return (Decimal if kind in _NUMBER_TYPES else kind, stored)


def compares_plainly(state_type: type[WorkflowState], field: str, value: object) -> bool:
    """Whether ``==`` tells, as ``lookup_key`` does, which kept values of ``field`` equal the
    lookup ``value`` (itself a ``stored_scalar``).

    It does when the field holds only ``str``, ``int``, ``float``, ``Decimal``, ``UUID``,
    ``datetime``, ``bytes`` or ``None`` (kept states hold datetimes in UTC to the millisecond
    already), unless ``value`` is a ``bool``, which ``==`` takes for a number. A persistence
    that compares in Python can then compare at C speed on the fields looked up most.
    """
    return type(value) is not bool and _holds_plain_values(state_type, field)


@functools.cache
def _holds_plain_values(state_type: type[WorkflowState], field: str) -> bool:
    info = state_type.model_fields.get(field)
    if info is None:
        return False
    annotation = info.annotation
    union = get_origin(annotation) in (Union, UnionType)
    return all(
        member in _PLAIN_TYPES for member in (get_args(annotation) if union else (annotation,))
    )


# The walk over a dumped state


class _RefusalError(Exception):
    """Why a value cannot be kept; the path to it is added on the way out."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why
        self.path: list[object] = []
        """Dict keys and list indexes, innermost first."""

    def error(self, where: str, workflow_id: str, field: str) -> InvalidStateValueError:
        path = _path_text(field, reversed(self.path))
        return InvalidStateValueError(
            f"{where}: workflow {_shown(workflow_id)}: field {path!r}: {self.why}. "
            "Nothing was written.",
            collection=where,
            workflow_id=workflow_id,
            field=path,
        )


class _NeedsJsonError(_RefusalError):
    """A value that only pydantic's JSON mode can give in a form that can be kept."""

    def __init__(self, value: object) -> None:
        # Raised at every save of a field that needs its JSON form, and caught: the text that
        # says why is written only if the JSON form cannot be had either (_cannot_serialize).
        super().__init__("it needs its JSON form")
        self.value_type = type(value)


class _Walk:
    """One pass over dumped values: converts them as kept, checks them, and adds up their size.

    ``value(python, json, depth)`` takes a value from ``model_dump()`` and, when at hand, the
    same value from ``model_dump(mode="json")``. Values that BSON holds natively are kept from
    the first; any other from the second. Without a JSON value it raises ``_NeedsJsonError``,
    and the caller dumps the field in JSON mode and walks it again.
    """

    __slots__ = ("exact", "size")

    def __init__(self) -> None:
        self.exact = True
        """Whether everything is kept with its own type (datetimes normalised aside)."""
        self.size = 0
        """The BSON size of the values walked."""

    def value(self, value: Any, json: Any, depth: int) -> Any:
        kind = type(value)
        if kind is str:
            self.size += len(value) + 5 if value.isascii() else _string_size(value)
            return value
        if kind is int:
            self.size += _int_size(value)
            return value
        if kind is bool:
            self.size += 1
            return value
        if kind is float:
            self.size += 8
            return value
        if value is None:
            return None
        if kind is datetime:
            self.size += 8
            return _utc_milliseconds(value)
        if kind is dict:
            return self.mapping(value, json, depth)
        if kind is list:
            return self.sequence(value, json, depth)
        if kind is Decimal:
            self.size += 16
            return _decimal(value)
        if kind is uuid.UUID:
            self.size += 21
            return value
        return self.other(value, json, depth)

    def other(self, value: Any, json: Any, depth: int) -> Any:
        """Values of any type but the most common ones, which ``value`` handles itself (and
        subclasses of those)."""
        if isinstance(value, enum.Enum):
            self.exact = False
            return self.value(value.value, json, depth)
        if isinstance(value, Decimal):
            self.size += 16
            return _decimal(value)
        if isinstance(value, uuid.UUID):
            self.size += 21
            return value if type(value) is uuid.UUID else uuid.UUID(int=value.int)
        if isinstance(value, bytes):
            self.size += 5 + len(value)
            return bytes(value)
        if isinstance(value, ObjectId):
            self.size += 12
            return value
        self.exact = False
        if isinstance(value, datetime):
            self.size += 8
            return _utc_milliseconds(value)
        if isinstance(value, date):
            self.size += 8
            return datetime(value.year, value.month, value.day, tzinfo=UTC)
        if isinstance(value, str):
            return self.value(str.__str__(value), json, depth)
        if isinstance(value, int):
            return self.value(int(value), json, depth)
        if isinstance(value, float):
            return self.value(float(value), json, depth)
        if isinstance(value, Mapping):
            return self.mapping(value, json, depth)
        if isinstance(value, list | tuple | set | frozenset):
            return self.sequence(value, json, depth)
        if isinstance(value, Decimal128):
            return self.value(value.to_decimal(), json, depth)
        if isinstance(value, Binary) and value.subtype in (0, 4):
            return self.value(
                value.as_uuid(UuidRepresentation.STANDARD) if value.subtype == 4 else bytes(value),
                json,
                depth,
            )
        if json is _MISSING:
            raise _NeedsJsonError(value)
        return self.value(json, json, depth)

    def mapping(self, value: Mapping[Any, Any], json: Any, depth: int) -> dict[str, Any]:
        if depth > MAX_NESTING:
            raise _too_deep()
        json_items: Iterator[tuple[Any, Any]] | None
        if json is _MISSING:
            json_items = None
        elif type(json) is dict and len(json) == len(value):
            json_items = iter(json.items())
        else:  # the JSON form has another shape than the Python one: keep it instead
            self.exact = False
            return self.value(json, json, depth)  # type: ignore[no-any-return]
        stored: dict[str, Any] = {}
        size = 5
        key: Any = None
        keys_converted = False  # only a converted key can collide with another
        try:
            for key, item in value.items():
                json_key, json_item = _NO_JSON if json_items is None else next(json_items)
                if type(key) is str:
                    name = key
                else:
                    self.exact = False
                    keys_converted = True
                    name = _key_text(key, json_key)
                if keys_converted and name in stored:
                    raise _RefusalError(
                        f"another key of this dict is stored as {name!r} too, and one would "
                        "overwrite the other; give the dict keys of one type"
                    )
                size += _KEY_SIZES.get(name) or _key_size(name)  # no call for a known key
                # The most common values are taken here, without a call (as in ``sequence``).
                kind = type(item)
                if kind is str and item.isascii():
                    size += len(item) + 5
                    stored[name] = item
                elif kind in _FIXED_SIZES:
                    size += _FIXED_SIZES[kind]
                    stored[name] = item
                elif kind is int and _INT32_MIN <= item <= _INT32_MAX:
                    size += 4
                    stored[name] = item
                else:
                    stored[name] = self.value(item, json_item, depth + 1)
        except _RefusalError as refusal:
            refusal.path.append(key)
            raise
        self.size += size
        return stored

    def sequence(self, value: Iterable[Any], json: Any, depth: int) -> list[Any]:
        if depth > MAX_NESTING:
            raise _too_deep()
        if type(value) is not list:
            self.exact = False
            value = list(value)
        if json is not _MISSING and (type(json) is not list or len(json) != len(value)):
            self.exact = False
            return self.value(json, json, depth)  # type: ignore[no-any-return]
        stored: list[Any] = []
        size = 5 + _index_keys_size(len(value))
        index = 0
        try:
            for index, item in enumerate(value):
                # The most common values are taken here, without a call (as in ``mapping``).
                kind = type(item)
                if kind is str and item.isascii():
                    size += len(item) + 5
                    stored.append(item)
                elif kind in _FIXED_SIZES:
                    size += _FIXED_SIZES[kind]
                    stored.append(item)
                elif kind is int and _INT32_MIN <= item <= _INT32_MAX:
                    size += 4
                    stored.append(item)
                else:
                    item_json = _MISSING if json is _MISSING else json[index]
                    stored.append(self.value(item, item_json, depth + 1))
        except _RefusalError as refusal:
            refusal.path.append(index)
            raise
        self.size += size
        return stored


_NO_JSON: Final = (_MISSING, _MISSING)
"""The JSON key and value of an item of a dict walked without its JSON form."""


# Scalars


def _string_size(value: str) -> int:
    if value.isascii():
        return len(value) + 5
    try:
        return len(value.encode()) + 5
    except UnicodeEncodeError as error:
        raise _RefusalError(
            f"the text holds a lone surrogate ({value[error.start]!r} at position "
            f"{error.start}), which UTF-8 cannot encode; decode bytes with errors='replace' "
            "or remove it"
        ) from None


def _key_size(key: str) -> int:
    """The size a key adds to its element (a type byte, the key, a NUL); checks the key."""
    size = _KEY_SIZES.get(key)
    if size is None:
        if key.startswith("$") or "." in key or "\x00" in key:
            raise _RefusalError(
                "MongoDB keeps no key that starts with '$' or holds '.' or a NUL character; "
                "use another key"
            )
        size = len(key) + 2 if key.isascii() else _string_size(key) - 3
        if len(_KEY_SIZES) < _KEY_SIZES_KEPT:
            _KEY_SIZES[key] = size
    return size


_KEY_SIZES: Final[dict[str, int]] = {}
"""The sizes of keys checked already: the same keys come back in every item of a list of
models and at every save."""
_KEY_SIZES_KEPT: Final = 10_000
"""At most this many, since keys can be data."""


def _int_size(value: int) -> int:
    if _INT32_MIN <= value <= _INT32_MAX:
        return 4
    if _INT64_MIN <= value <= _INT64_MAX:
        return 8
    raise _RefusalError(
        f"a {value.bit_length()}-bit integer does not fit MongoDB's 64-bit integers; keep it "
        "as a str or a Decimal"
    )


def _decimal(value: Decimal) -> Decimal:
    try:
        _DECIMAL128.create_decimal(value)
    except DecimalException:
        raise _RefusalError(
            f"{value} has more digits or a larger exponent than MongoDB's Decimal128 holds "
            "(34 digits, exponents from -6176 to 6111); round it, or keep it as a str"
        ) from None
    return value if type(value) is Decimal else Decimal(value)


def _utc_milliseconds(value: datetime) -> datetime:
    """A datetime as MongoDB keeps it: in UTC, to the millisecond; a naive one is UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    elif value.tzinfo is not UTC:
        try:
            value = value.astimezone(UTC)
        except OverflowError:
            raise _RefusalError(
                f"{value} is outside the years 1 to 9999 once in UTC; keep a datetime in that range"
            ) from None
    extra = value.microsecond % 1000
    return value.replace(microsecond=value.microsecond - extra) if extra else value


def _key_text(key: object, json_key: object) -> str:
    """A dict key that is not a str as it is kept: numbers, UUIDs and enums as their text, any
    other key as pydantic's JSON form of it."""
    if isinstance(key, enum.Enum):
        key = key.value
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, int | float | Decimal | uuid.UUID) and not isinstance(key, bool):
        return str(key)
    if isinstance(json_key, str):
        return json_key
    raise _NeedsJsonError(key)


def _too_deep() -> _RefusalError:
    return _RefusalError(
        f"it nests dicts and lists deeper than MongoDB's {MAX_NESTING} levels; flatten it"
    )


def _index_keys_size(count: int) -> int:
    """The size of the keys ``"0"``, ``"1"``... of a list's ``count`` elements (type byte, key,
    NUL each)."""
    if count <= 10:
        return 3 * count
    size, digits, start = 0, 1, 0
    while start < count:
        end = min(count, 10**digits)
        size += (end - start) * (digits + 2)
        start, digits = end, digits + 1
    return size


_FRAMEWORK_BYTES: Final = 5 + sum(len(key) + 2 for key in (ID, VERSION, STATUS, UPDATED_AT)) + 8
"""A document's length and terminator, busflow's own keys, and ``_updated_at``'s datetime."""


def _framework_size(state: WorkflowState, version: int, where: str) -> int:
    """The size of a document but for the state's own fields."""
    try:
        size = _FRAMEWORK_BYTES + _string_size(state.workflow_id)
    except _RefusalError as refusal:
        raise refusal.error(where, state.workflow_id, "workflow_id") from None
    size += _int_size(version) + _string_size(state.workflow_status.value)
    if state.workflow_status is WorkflowStatus.COMPLETE:
        size += len(COMPLETED_AT) + 2 + 8
    return size


# JSON-mode values


def _json_field(state: WorkflowState, name: str, key: str, needs: _NeedsJsonError) -> Any:
    """One field of ``state`` in pydantic's JSON mode."""
    try:
        return state.model_dump(mode="json", by_alias=True, include={name})[key]
    except (PydanticSerializationError, ValueError) as error:
        raise _cannot_serialize(needs, error) from None


def _json_value(value: object, needs: _NeedsJsonError) -> Any:
    """A value, outside any model, in pydantic's JSON mode."""
    try:
        return to_jsonable_python(value)
    except (PydanticSerializationError, ValueError) as error:
        raise _cannot_serialize(needs, error) from None


def _cannot_serialize(needs: _NeedsJsonError, error: Exception) -> _RefusalError:
    needs.why = (
        f"a {needs.value_type.__name__} cannot be stored: it is not a type BSON holds, and "
        f"pydantic cannot serialize it ({error}); give the field a type pydantic can serialize"
    )
    return needs


# Reading back


def _read_back(
    state_type: type[WorkflowState], data: dict[str, Any], where: str, workflow_id: str
) -> WorkflowState:
    try:
        return state_from(state_type, data, by_alias=True)
    except ValidationError as error:
        problem = error.errors()[0]
        path = ".".join(str(part) for part in problem["loc"])
        raise InvalidStateValueError(
            f"{where}: workflow {_shown(workflow_id)}: field {path!r}: {state_type.__name__} "
            f"would not read back what is stored ({problem['msg']}); keep a value that its "
            "type reads back, such as an enum with str or int values. Nothing was written.",
            collection=where,
            workflow_id=workflow_id,
            field=path,
        ) from None


def _check_comes_back(
    returned: object, original: object, where: str, state: WorkflowState, name: str
) -> None:
    difference = _difference(returned, original)
    if difference is None:
        return
    path, returned_part, original_part = difference
    raise _RefusalError(
        f"{_described(original_part)} would come back as {_described(returned_part)}; give the "
        "field a type that reads it back (not Any), or keep a plain value"
    ).error(where, state.workflow_id, _path_text(name, path))


def _difference(returned: Any, original: Any) -> tuple[list[object], Any, Any] | None:
    """Where ``returned`` differs from ``original``, with datetimes compared as kept: the path
    and the two values there; ``None`` when they are the same."""
    pairs: Iterable[tuple[object, Any, Any]]
    if isinstance(original, datetime):
        same = isinstance(returned, datetime) and returned == _utc_milliseconds(original)
        return None if same else ([], returned, original)
    if isinstance(original, BaseModel) or (
        dataclasses.is_dataclass(original) and not isinstance(original, type)
    ):
        if type(returned) is not type(original):
            return [], returned, original
        fields = (
            list(type(original).model_fields)
            if isinstance(original, BaseModel)
            else [field.name for field in dataclasses.fields(original)]
        )
        pairs = ((name, getattr(returned, name), getattr(original, name)) for name in fields)
    elif isinstance(original, Mapping):
        if not isinstance(returned, Mapping) or returned.keys() != original.keys():
            return [], returned, original
        pairs = ((key, returned[key], item) for key, item in original.items())
    elif isinstance(original, list | tuple):
        if type(returned) is not type(original) or len(returned) != len(original):
            return [], returned, original
        pairs = zip(range(len(original)), returned, original, strict=True)
    elif isinstance(original, set | frozenset):
        kept = {_utc_milliseconds(x) if isinstance(x, datetime) else x for x in original}
        return None if returned == kept else ([], returned, original)
    elif _is_nan(original):
        return None if _is_nan(returned) else ([], returned, original)
    else:
        return None if returned == original else ([], returned, original)
    for part, returned_item, original_item in pairs:
        difference = _difference(returned_item, original_item)
        if difference is not None:
            difference[0].insert(0, part)
            return difference
    return None


def _is_nan(value: object) -> bool:
    return (isinstance(value, float) and value != value) or (
        isinstance(value, Decimal) and value.is_nan()
    )


# Messages


def _path_text(field: str, parts: Iterable[object]) -> str:
    """``notes.big``, ``notes['$where']``, ``history[1].street``."""
    text = field
    for part in parts:
        text += f".{part}" if isinstance(part, str) and part.isidentifier() else f"[{part!r}]"
    return text


def _described(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _shown(text: str) -> str:
    """``text`` as it can be printed: escaped if it holds what UTF-8 cannot encode."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return ascii(text)
    return text
