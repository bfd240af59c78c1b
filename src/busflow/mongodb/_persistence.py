"""``MongoPersistence``: workflow state in MongoDB, one collection per state type."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Self, TypeAlias, TypeVar

import bson
from pymongo import AsyncMongoClient, MongoClient
from pymongo.errors import (
    CollectionInvalid,
    ConnectionFailure,
    DuplicateKeyError,
    InvalidURI,
    OperationFailure,
    PyMongoError,
)
from pymongo.errors import ConfigurationError as PyMongoConfigurationError

from busflow._errors import (
    ConfigurationError,
    PersistenceConnectionError,
    PersistenceError,
    WorkflowConcurrencyError,
    WorkflowUniquenessError,
)
from busflow._logs import with_fields
from busflow._messages import Message, MessageAttributes
from busflow._persistence import CoreDependencies, WorkflowReads, resolve_lookup
from busflow._timeouts import ClaimedMessage, ScheduledMessage
from busflow._uri import hosts_of, mask_password, redact_uri
from busflow._values import OUTBOX
from busflow._workflow import (
    MessageWorkflowMapping,
    WorkflowState,
    WorkflowStatus,
    check_mapping_fields,
    check_state_type,
)
from busflow.mongodb._documents import (
    COMPLETED_AT,
    ID,
    STATUS,
    VERSION,
    StateLayout,
    collection_name_for,
    to_bson,
)
from busflow.mongodb._timeouts import TIMEOUTS_COLLECTION, ScheduledMessages

__all__ = [
    "REGISTRY_COLLECTION",
    "ExpectedIndex",
    "MongoPersistence",
    "WorkflowOptions",
    "expected_indexes",
]

S = TypeVar("S", bound=WorkflowState)

if TYPE_CHECKING:
    from motor.motor_asyncio import AsyncIOMotorClient

AsyncClient: TypeAlias = "AsyncMongoClient[Any] | AsyncIOMotorClient[Any]"
"""The clients ``MongoPersistence`` takes: PyMongo's, Motor's, or mongomock-motor's (a Motor
client)."""

LOOKUP_INDEX_PREFIX = "busflow_lookup_"
UNIQUE_INDEX_PREFIX = "busflow_unique_running_"
RETENTION_INDEX = "busflow_retain_completed"
REGISTRY_COLLECTION = "busflow_workflows"
"""One document per workflow collection: its state type and the indexes busflow expects."""
BSON_WITHOUT_C_EXTRA_CPU_PERCENT = 27
"""How much more CPU per saga message busflow used without bson's C extension (issue 14)."""


@dataclass(frozen=True)
class WorkflowOptions:
    """What ``MongoPersistence`` can do for one state type beyond the protocol."""

    unique_running: tuple[str, ...] = ()
    """Fields of which at most one *running* workflow may hold each value."""
    retain_completed: timedelta | None = None
    """How long a completed workflow is kept before MongoDB deletes it (a TTL index)."""


def _direction(value: object) -> int | str:
    """An index key's direction as listed (1.0, Int64(1)...) as an int; "hashed" etc. as is."""
    return int(value) if isinstance(value, int | float) else str(value)


@dataclass(frozen=True)
class ExpectedIndex:
    name: str
    keys: tuple[tuple[str, int | str], ...]
    unique: bool = False
    partial_filter: dict[str, Any] | None = None
    expire_after_seconds: int | None = None

    async def create(self, collection: Any) -> None:
        """Create this index; one call per index, which every backend honours in full."""
        options = {key: value for key, value in self.describe().items() if key != "key"}
        await collection.create_index(list(self.keys), **options)

    def describe(self) -> dict[str, Any]:
        """This index as the server would list it."""
        described: dict[str, Any] = {"name": self.name, "key": dict(self.keys)}
        if self.unique:
            described["unique"] = True
        if self.partial_filter is not None:
            described["partialFilterExpression"] = self.partial_filter
        if self.expire_after_seconds is not None:
            described["expireAfterSeconds"] = self.expire_after_seconds
        return described

    @classmethod
    def from_description(cls, described: dict[str, Any]) -> ExpectedIndex:
        return cls(
            name=str(described["name"]),
            keys=tuple(
                (str(key), _direction(value)) for key, value in dict(described["key"]).items()
            ),
            unique=bool(described.get("unique", False)),
            partial_filter=described.get("partialFilterExpression"),
            expire_after_seconds=described.get("expireAfterSeconds"),
        )

    def same_spec_in(self, listed: dict[str, dict[str, Any]]) -> str | None:
        """The name of a listed index with this one's spec under any name, if there is one."""
        return next((name for name, index in listed.items() if not self.differences(index)), None)

    def differences(self, listed: dict[str, Any]) -> list[str]:
        """How an index as the server lists it differs from this one (ignoring the TTL)."""
        found: list[str] = []
        keys = tuple((str(key), _direction(value)) for key, value in dict(listed["key"]).items())
        if keys != self.keys:
            found.append(f"keys {dict(keys)} instead of {dict(self.keys)}")
        if bool(listed.get("unique", False)) != self.unique:
            found.append(f"unique={bool(listed.get('unique', False))} instead of {self.unique}")
        partial = listed.get("partialFilterExpression")
        if (dict(partial) if partial is not None else None) != self.partial_filter:
            found.append(f"partialFilterExpression {partial} instead of {self.partial_filter}")
        return found


def expected_indexes(
    layout: StateLayout,
    mappings: Iterable[MessageWorkflowMapping[Any, Any]],
    options: WorkflowOptions,
) -> list[ExpectedIndex]:
    """The indexes busflow keeps on a state type's collection."""
    indexes: list[ExpectedIndex] = []
    lookup_keys: list[str] = []
    for mapping in mappings:
        key = layout.key_for(mapping.maps_to)
        if not key.startswith("_") and key not in lookup_keys:
            lookup_keys.append(key)
    indexes += [
        ExpectedIndex(f"{LOOKUP_INDEX_PREFIX}{key}", ((key, 1), (STATUS, 1))) for key in lookup_keys
    ]
    for field in options.unique_running:
        key = layout.key_for(field)
        indexes.append(
            ExpectedIndex(
                f"{UNIQUE_INDEX_PREFIX}{key}",
                ((key, 1),),
                unique=True,
                partial_filter={STATUS: WorkflowStatus.RUNNING.value},
            )
        )
    if options.retain_completed is not None:
        seconds = int(options.retain_completed.total_seconds())
        if seconds < 0:
            raise ConfigurationError(f"{layout.collection}: retain_completed must not be negative")
        indexes.append(
            ExpectedIndex(RETENTION_INDEX, ((COMPLETED_AT, 1),), expire_after_seconds=seconds)
        )
    return indexes


def _database_name_problem(name: str) -> str | None:
    """Why MongoDB would refuse ``name`` for a database, if it would."""
    if not name:
        return "no database name given; pass database=..."
    forbidden = sorted(set(name) & set('/\\. "$\x00'))
    if forbidden:
        return (
            f"the database name {name!r} holds {', '.join(map(repr, forbidden))}, which "
            "MongoDB does not allow there; choose another name"
        )
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        return f"the database name {name!a} is not valid UTF-8"
    if size >= 64:
        return f"the database name {name!r} is 64 bytes or more; MongoDB allows 63"
    return None


def _prefix_problem(prefix: str) -> str | None:
    """Why MongoDB would refuse collection names that start with ``prefix``, if it would."""
    if "$" in prefix or "\x00" in prefix or ".." in prefix or prefix.startswith((".", "system.")):
        return (
            f"the collection_prefix {prefix!r} would give collection names MongoDB refuses "
            "(with '$', NUL or '..', or starting with '.' or 'system.'); choose another prefix"
        )
    return None


def _synchronous(client: object) -> bool:
    """Whether ``client`` is a synchronous client (PyMongo's or mongomock's ``MongoClient``),
    whose calls return results where busflow awaits them."""
    return isinstance(client, MongoClient) or type(client).__module__.startswith("mongomock.")


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class MongoPersistence(WorkflowReads):
    """Keeps workflow state in MongoDB: one collection per state type, versioned documents.

    Give it a connection string, ``MongoPersistence("mongodb://host/", database="workflows")``,
    or a client you made, ``MongoPersistence(client=client, database="workflows")``: a PyMongo
    ``AsyncMongoClient``, a Motor ``AsyncIOMotorClient`` or mongomock-motor's
    ``AsyncMongoMockClient``. ``dispose()`` closes only a client it made itself.

    Each document has the workflow id as ``_id``, ``_version``, ``_status``, ``_updated_at``,
    ``_completed_at`` once complete, and the state's own fields flat beside them.
    """

    def __init__(
        self,
        uri: str | None = None,
        *,
        client: AsyncClient | None = None,
        database: str = "workflows",
        collection_prefix: str = "",
        connect_timeout: float = 10.0,
    ) -> None:
        if (uri is None) == (client is None):
            raise ConfigurationError(
                "MongoPersistence needs a connection string or a client, not both"
            )
        if _synchronous(client):
            raise ConfigurationError(
                f"MongoPersistence needs an async client, and {type(client).__module__}."
                f"{type(client).__qualname__} is synchronous: pass pymongo.AsyncMongoClient "
                "(or a Motor or mongomock-motor client), or a connection string"
            )
        for problem in (_database_name_problem(database), _prefix_problem(collection_prefix)):
            if problem is not None:
                raise ConfigurationError(f"MongoPersistence: {problem}")
        self._uri = uri
        self._client: Any = client
        self._owns_client = client is None
        self._database_name = database
        self._prefix = collection_prefix
        self._connect_timeout = connect_timeout
        self._logger = with_fields(logging.getLogger("busflow.mongodb"))
        self._options: dict[type[WorkflowState], WorkflowOptions] = {}
        self._layouts: dict[type[WorkflowState], StateLayout] = {}
        self._state_type_by_collection: dict[str, type[WorkflowState]] = {}
        self._collections: dict[str, Any] = {}
        self._scheduled_messages: ScheduledMessages | None = None
        self._registry_read: asyncio.Future[dict[str, dict[str, Any]]] | None = None

    def __repr__(self) -> str:
        where = redact_uri(self._uri) if self._uri is not None else type(self._client).__name__
        return f"MongoPersistence({where!r}, database={self._database_name!r})"

    @property
    def client(self) -> Any:
        """The MongoDB client; made on first use from the connection string."""
        if self._client is None:
            assert self._uri is not None
            try:
                self._client = AsyncMongoClient(
                    self._uri,
                    serverSelectionTimeoutMS=int(self._connect_timeout * 1000),
                    tz_aware=True,
                    uuidRepresentation="standard",
                    appname="busflow",
                )
            except (PyMongoError, ValueError, TypeError) as error:  # the driver's own checks
                raise ConfigurationError(
                    f"bad MongoDB connection string {redact_uri(self._uri)}: "
                    f"{mask_password(str(error), self._uri)}"
                ) from None
        return self._client

    @property
    def database(self) -> Any:
        return self.client[self._database_name]

    def with_workflow_options(
        self,
        state_type: type[WorkflowState],
        *,
        unique_running: Sequence[str] = (),
        retain_completed: timedelta | None = None,
    ) -> Self:
        """Uniqueness and retention for one state type; set before ``initialize_workflow``.

        ``unique_running=["order_id"]`` allows at most one running workflow per order id (a
        save that breaks it raises ``WorkflowConcurrencyError``); ``retain_completed`` makes
        MongoDB delete completed workflows that long after completion.
        """
        check_state_type(state_type, owner="MongoPersistence.with_workflow_options")
        self._options[state_type] = WorkflowOptions(tuple(unique_running), retain_completed)
        return self

    def collection_name(self, state_type: type[WorkflowState]) -> str:
        """The collection of a state type: its ``workflow_name`` in snake_case, prefixed."""
        check_state_type(state_type, owner="MongoPersistence")
        return collection_name_for(state_type.workflow_name, self._prefix)

    # lifecycle

    def prepare(self, core_dependencies: CoreDependencies) -> None:
        self._logger = core_dependencies.logger_factory("busflow.mongodb")

    async def initialize(self) -> None:
        """Connect and ping; fail within ``connect_timeout`` seconds if the server is away.

        Warns once, on the ``busflow.mongodb`` logger, when bson runs without its C extension.
        """
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self.client.admin.command("ping")
        except (PyMongoError, TimeoutError) as error:
            where = self._where()
            await self.dispose()
            if isinstance(error, InvalidURI | PyMongoConfigurationError):
                raise ConfigurationError(
                    f"bad MongoDB connection string for {where}: {type(error).__name__}"
                ) from None
            if isinstance(error, OperationFailure):
                raise PersistenceConnectionError(
                    f"MongoDB at {where} refused the connection (code {error.code}); check "
                    "the user, password and authSource"
                ) from None
            raise PersistenceConnectionError(
                f"cannot reach MongoDB at {where} within {self._connect_timeout:g} s "
                f"({type(error).__name__}); check that the server runs and the address is right"
            ) from None
        self._logger.info(
            "connected to MongoDB at %s, database %s", self._where(), self._database_name
        )
        if not bson.has_c():
            self._logger.warning(
                "bson's C extension is missing (bson.has_c() is False): encoding and decoding "
                "every message costs about %d%% more CPU. Install PyMongo's binary wheel for "
                "this platform (pip install --force-reinstall --only-binary=pymongo pymongo), "
                "or run a CPython for which PyMongo publishes one",
                BSON_WITHOUT_C_EXTRA_CPU_PERCENT,
            )

    async def dispose(self) -> None:
        """Close the client if this persistence made it; a handed-in client stays open."""
        if self._owns_client and self._client is not None:
            await _maybe_await(self._client.close())
            self._client = None
            self._collections.clear()
            self._scheduled_messages = None

    # the protocol

    async def initialize_workflow(
        self,
        state_type: type[WorkflowState],
        mappings: Sequence[MessageWorkflowMapping[Any, Any]],
    ) -> None:
        """Create the collection and busflow's indexes if missing. Never drops anything.

        A restart, where the registry entry, the collection and its indexes are as expected,
        sends one ``listIndexes``, plus one ``find`` on the registry that every
        ``initialize_workflow`` call running at the same time shares (the bus calls them all
        at once). Anything missing or different costs a command to create or write it.
        """
        layout = self._layout(state_type)
        check_mapping_fields(state_type, mappings, owner=layout.collection)
        options = self._options.get(state_type, WorkflowOptions())
        wanted = expected_indexes(layout, mappings, options)
        registry_read = self._shared_registry_read()
        try:
            registered, listed = await asyncio.gather(
                asyncio.shield(registry_read), self._listed_indexes(layout.collection)
            )
            wrote_entry = await self._register(layout, wanted, registered.get(layout.collection))
            created_indexes = await self._ensure_indexes(layout.collection, wanted, listed or {})
            if (listed is None or wrote_entry) and not created_indexes:
                await self._create_collection(layout.collection)  # creating an index creates it
        except ConnectionFailure as error:
            raise self._connection_error("initialize_workflow", layout.collection, error) from error
        except (OperationFailure, CollectionInvalid) as error:
            raise PersistenceError(
                f"{layout.collection}: setting up the collection failed: {error}"
            ) from error
        self._logger.debug(
            "initialize_workflow %s: indexes %s",
            layout.collection,
            [index.name for index in wanted],
        )

    async def get_workflow_state(
        self,
        state_type: type[S],
        mapping: MessageWorkflowMapping[Any, Any],
        message: Message,
        attributes: MessageAttributes,
        include_completed: bool = False,
    ) -> list[S]:
        layout = self._layout(state_type)
        value = resolve_lookup(mapping, message, attributes, where=layout.collection)
        if value is None:
            return []
        key = layout.key_for(mapping.maps_to)
        query: dict[str, Any] = {key: {"$eq": to_bson(value)}}
        if not include_completed:
            query[STATUS] = WorkflowStatus.RUNNING.value
        try:
            documents = [
                document async for document in self._collection(layout.collection).find(query)
            ]
        except ConnectionFailure as error:
            raise self._connection_error("get_workflow_state", layout.collection, error) from error
        except PyMongoError as error:
            raise PersistenceError(
                f"{layout.collection}: looking up {key}={value!r} failed: {error}"
            ) from error
        self._logger.debug(
            "get_workflow_state %s %s=%r: %d found", layout.collection, key, value, len(documents)
        )
        return [layout.from_document(document) for document in documents]  # type: ignore[misc]

    def unique_running_fields(self, state_type: type[WorkflowState]) -> tuple[str, ...]:
        """The fields set with ``with_workflow_options(unique_running=...)``."""
        return self._options.get(state_type, WorkflowOptions()).unique_running

    async def save_workflow_state(self, state: WorkflowState) -> WorkflowState:
        """Save ``state``, and return it as it reads back at its new version."""
        layout = self._layout(type(state))
        version = state.workflow_version
        document, read_back = layout.to_stored(state, version=version + 1, now=datetime.now(UTC))
        collection = self._collection(layout.collection)
        try:
            if version == 0:
                await collection.insert_one(document)
                replaced: Any = True
            else:
                replaced = await collection.find_one_and_replace(
                    {ID: state.workflow_id, VERSION: version}, document, projection={ID: True}
                )
        except DuplicateKeyError as error:
            raise self._duplicate_error(layout, state, error) from error
        except ConnectionFailure as error:
            raise self._connection_error("save_workflow_state", layout.collection, error) from error
        except PyMongoError as error:
            raise PersistenceError(
                f"{layout.collection}: saving workflow {state.workflow_id} failed: {error}"
            ) from error
        if replaced is None:
            raise WorkflowConcurrencyError(
                f"{layout.collection}: workflow {state.workflow_id} is no longer at version "
                f"{version} (another handler saved it first, or it does not exist); read it "
                "again and retry",
                collection=layout.collection,
                workflow_id=state.workflow_id,
                expected_version=version,
            )
        self._logger.debug(
            "save_workflow_state %s %s: version %d",
            layout.collection,
            state.workflow_id,
            version + 1,
        )
        return read_back

    async def clear_outbox(
        self, state_type: type[WorkflowState], workflow_id: str, message_ids: Sequence[str]
    ) -> None:
        """Pull dispatched messages from a workflow's ``_outbox``; one update, no new version."""
        layout = self._layout(state_type)
        try:
            await self._collection(layout.collection).update_one(
                {ID: {"$eq": workflow_id}},
                {"$pull": {OUTBOX: {"message_id": {"$in": list(message_ids)}}}},
            )
        except ConnectionFailure as error:
            raise self._connection_error("clear_outbox", layout.collection, error) from error
        except PyMongoError as error:
            raise PersistenceError(
                f"{layout.collection}: clearing the outbox of workflow {workflow_id} failed: "
                f"{error}"
            ) from error

    # TimeoutStore: messages to deliver later, in busflow_timeouts

    async def schedule_messages(self, messages: Sequence[ScheduledMessage]) -> None:
        try:
            await self._scheduled().schedule(messages)
        except PyMongoError as error:
            raise self._timeouts_error("storing messages for later", error) from error

    async def claim_due_messages(
        self, now: datetime, *, owner: str, lease: timedelta, limit: int
    ) -> list[ClaimedMessage]:
        try:
            return await self._scheduled().claim(now, owner, lease, limit)
        except PyMongoError as error:
            raise self._timeouts_error("claiming due messages", error) from error

    async def remove_claimed_message(self, claimed: ClaimedMessage) -> None:
        try:
            await self._scheduled().remove(claimed)
        except PyMongoError as error:
            raise self._timeouts_error("removing a delivered message", error) from error

    def _scheduled(self) -> ScheduledMessages:
        if self._scheduled_messages is None:
            self._scheduled_messages = ScheduledMessages(self._collection(TIMEOUTS_COLLECTION))
        return self._scheduled_messages

    def _timeouts_error(self, what: str, error: PyMongoError) -> PersistenceError:
        if isinstance(error, ConnectionFailure):
            return self._connection_error(what, TIMEOUTS_COLLECTION, error)
        return PersistenceError(f"{TIMEOUTS_COLLECTION}: {what} failed: {error}")

    # helpers

    def _collection(self, name: str) -> Any:
        """The collection object, made once: PyMongo builds new ones on every ``db[name]``."""
        collection = self._collections.get(name)
        if collection is None:
            collection = self._collections[name] = self.database[name]
        return collection

    def _layout(self, state_type: type[WorkflowState]) -> StateLayout:
        layout = self._layouts.get(state_type)
        if layout is None:
            collection = self.collection_name(state_type)
            other = self._state_type_by_collection.setdefault(collection, state_type)
            if other is not state_type:
                raise ConfigurationError(
                    f"{state_type.__name__} and {other.__name__} would share the collection "
                    f"{collection!r}; give them different workflow_name values"
                )
            layout = self._layouts[state_type] = StateLayout.of(state_type, collection)
            for field in self._options.get(state_type, WorkflowOptions()).unique_running:
                layout.key_for(field)
        return layout

    async def _create_collection(self, name: str) -> None:
        """Create the collection; one that exists already (made by another process) is fine.

        One ``create``: without ``check_exists=False`` PyMongo asks ``listCollections`` first.
        """
        try:
            try:
                await self.database.create_collection(name, check_exists=False)
            except NotImplementedError:  # mongomock takes no options (and checks by itself)
                await self.database.create_collection(name)
        except (CollectionInvalid, OperationFailure) as error:
            if not (getattr(error, "code", None) == 48 or "already exists" in str(error)):
                raise

    async def _listed_indexes(self, collection_name: str) -> dict[str, dict[str, Any]] | None:
        """The collection's indexes by name, or None when the collection does not exist.

        MongoDB answers ``listIndexes`` on a missing collection with NamespaceNotFound (code
        26), which PyMongo turns into no index at all, as mongomock answers; an existing
        collection always lists ``_id_``. mongoeco lists ``_id_`` for a missing collection too,
        so there a collection without busflow indexes is created only when its registry entry
        is written (its first save creates it anyway).
        """
        cursor = await _maybe_await(self._collection(collection_name).list_indexes())
        listed = {index["name"]: index async for index in cursor}
        return listed or None

    async def _ensure_indexes(
        self,
        collection_name: str,
        wanted: list[ExpectedIndex],
        listed: dict[str, dict[str, Any]],
    ) -> bool:
        """Create the wanted indexes that are not listed; whether it created any."""
        collection = self._collection(collection_name)
        if RETENTION_INDEX in listed and all(index.name != RETENTION_INDEX for index in wanted):
            self._logger.warning(
                "%s: completed workflows are still deleted after %s s by the index %r, though "
                "no retain_completed is configured; drop it to keep them "
                "(db.%s.dropIndex(%r))",
                collection_name,
                listed[RETENTION_INDEX].get("expireAfterSeconds"),
                RETENTION_INDEX,
                collection_name,
                RETENTION_INDEX,
            )
        missing: list[ExpectedIndex] = []
        for index in wanted:
            found = listed.get(index.name)
            if found is None:
                if index.same_spec_in(listed) is None:
                    missing.append(index)
                continue
            differences = index.differences(found)
            if differences:
                raise ConfigurationError(
                    f"{collection_name}: the index {index.name!r} exists with "
                    f"{'; '.join(differences)}. busflow never drops indexes: drop it yourself "
                    f"(db.{collection_name}.dropIndex({index.name!r})) and start again"
                )
            if index.expire_after_seconds != found.get("expireAfterSeconds"):
                await self._change_retention(collection, index)
        if missing:
            for index in missing:
                await index.create(collection)
            self._logger.info(
                "%s: created indexes %s", collection_name, [index.name for index in missing]
            )
        return bool(missing)

    async def _change_retention(self, collection: Any, index: ExpectedIndex) -> None:
        """Give busflow's own TTL index a new expiry: collMod, or drop and recreate it."""
        try:
            await self.database.command(
                {
                    "collMod": collection.name,
                    "index": {"name": index.name, "expireAfterSeconds": index.expire_after_seconds},
                }
            )
        except (OperationFailure, NotImplementedError):  # servers without collMod
            await collection.drop_index(index.name)
            await index.create(collection)
        self._logger.info(
            "%s: completed workflows are now kept %s s", collection.name, index.expire_after_seconds
        )

    def _shared_registry_read(self) -> asyncio.Future[dict[str, dict[str, Any]]]:
        """One read of the whole registry, shared by the ``initialize_workflow`` calls running
        now; a call that starts after it finished reads again."""
        read = self._registry_read
        if read is None:
            read = self._registry_read = asyncio.ensure_future(self._read_registry())
            read.add_done_callback(self._registry_read_done)
        return read

    async def _read_registry(self) -> dict[str, dict[str, Any]]:
        registry = self._collection(REGISTRY_COLLECTION)
        return {entry[ID]: entry async for entry in registry.find({}) if isinstance(entry[ID], str)}

    def _registry_read_done(self, read: asyncio.Future[dict[str, dict[str, Any]]]) -> None:
        self._registry_read = None
        if not read.cancelled():
            read.exception()  # each caller gets it; this only keeps asyncio from reporting it

    async def _register(
        self, layout: StateLayout, wanted: list[ExpectedIndex], current: dict[str, Any] | None
    ) -> bool:
        """Record the state type and its expected indexes for operators (``busflow inspect``);
        whether the entry had to be written.

        ``current`` is the entry as read from the registry. It is left alone when it is
        unchanged: the same workflow name, state type, fields and indexes. ``registered_at``
        is therefore when the entry was first written or last changed, not the last start.

        The registry also keeps two workflows out of one collection: a collection registered
        to another ``workflow_name`` (by any process) is refused, naming both.
        """
        workflow_name = layout.state_type.workflow_name
        described = {
            "workflow_name": workflow_name,
            "state_type": f"{layout.state_type.__module__}.{layout.state_type.__qualname__}",
            "fields": {name: key for name, key in layout.keys.items()},
            "indexes": [index.describe() for index in wanted],
        }
        if current is not None:
            if current.get("workflow_name") != workflow_name:
                raise self._registered_elsewhere(layout, current.get("workflow_name"))
            unchanged = {key: value for key, value in current.items() if key != "registered_at"}
            if unchanged == {ID: layout.collection, **described}:
                return False
        entry = {ID: layout.collection, **described, "registered_at": datetime.now(UTC)}
        registry = self._collection(REGISTRY_COLLECTION)
        mine = {ID: layout.collection, "workflow_name": workflow_name}
        try:
            await registry.replace_one(mine, entry, upsert=True)
        except DuplicateKeyError:  # registered meanwhile, maybe to another name
            other = await registry.find_one({ID: layout.collection})
            registered = None if other is None else other.get("workflow_name")
            if registered != workflow_name:
                raise self._registered_elsewhere(layout, registered) from None
            await registry.replace_one(mine, entry, upsert=True)
        return True

    def _registered_elsewhere(self, layout: StateLayout, registered: object) -> ConfigurationError:
        workflow_name = layout.state_type.workflow_name
        return ConfigurationError(
            f"{layout.collection}: {REGISTRY_COLLECTION} registers this collection to "
            f"workflow_name {registered!r}, so {workflow_name!r} ({layout.state_type.__name__}) "
            "cannot keep its workflows there too; give one of them another workflow_name, or "
            f"this persistence a collection_prefix. If {registered!r} is no longer used, delete "
            f"its entry: db.{REGISTRY_COLLECTION}.deleteOne({{_id: {layout.collection!r}}})"
        )

    def _duplicate_error(
        self, layout: StateLayout, state: WorkflowState, error: DuplicateKeyError
    ) -> WorkflowConcurrencyError:
        details = error.details or {}
        pattern = list(dict(details.get("keyPattern") or {ID: 1}))
        if pattern and pattern != [ID]:
            key = pattern[0]
            value = dict(details.get("keyValue") or {}).get(key)
            return WorkflowUniquenessError.on_save(
                layout.collection, state.workflow_id, key, value, state.workflow_version
            )
        return WorkflowConcurrencyError(
            f"{layout.collection}: workflow {state.workflow_id} already exists; a new "
            "workflow needs a new id",
            collection=layout.collection,
            workflow_id=state.workflow_id,
            expected_version=state.workflow_version,
        )

    def _connection_error(
        self, operation: str, collection: str, error: PyMongoError
    ) -> PersistenceConnectionError:
        return PersistenceConnectionError(
            f"{collection}: {operation} lost MongoDB at {self._where()} ({type(error).__name__}); "
            "the message will be retried"
        )

    def _where(self) -> str:
        if self._uri is not None:
            return hosts_of(self._uri)
        try:
            description = self._client.topology_description
            addresses = [f"{host}:{port}" for host, port in description.server_descriptions()]
            return ",".join(addresses) or type(self._client).__name__
        except Exception:
            return type(self._client).__name__
