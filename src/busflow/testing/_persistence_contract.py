"""The persistence contract suite behind ``busflow.testing``; see that module for how to use it."""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Network
from pathlib import PurePosixPath
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from busflow import (
    Bus,
    ClaimedMessage,
    ConfigurationError,
    CoreDependencies,
    InvalidLookupValueError,
    InvalidStateValueError,
    Message,
    MessageAttributes,
    MessageWorkflowMapping,
    OutboxMessage,
    Persistence,
    RetryPolicy,
    ScheduledMessage,
    TimeoutStore,
    TransportMessage,
    Workflow,
    WorkflowConcurrencyError,
    WorkflowMapper,
    WorkflowState,
    WorkflowStatus,
)

__all__ = [
    "Address",
    "ContractMessage",
    "ContractOrder",
    "ContractTypes",
    "ContractValues",
    "Level",
    "PersistenceContract",
    "Priority",
    "Shape",
]


class ContractOrder(WorkflowState):
    """A state with plain, optional and aliased lookup fields."""

    workflow_name = "busflow-contract/order"

    order_id: str = ""
    customer: str | None = Field(default=None, alias="customerRef")
    items: list[str] = Field(default_factory=list)


class Priority(enum.Enum):
    LOW = "low"
    HIGH = "high"


class Address(BaseModel):
    street: str
    tags: list[str] = Field(default_factory=list)


class ContractValues(WorkflowState):
    """A state holding a value of every type a state may hold."""

    workflow_name = "busflow-contract/values"

    key: str = ""
    text: str = ""
    count: int = 0
    big: int = 0
    ratio: float = 0.0
    flag: bool = False
    nothing: str | None = None
    at: datetime | None = None
    day: date | None = None
    amount: Decimal | None = None
    reference: uuid.UUID | None = None
    priority: Priority = Priority.LOW
    address: Address | None = None
    numbers: list[int] = Field(default_factory=list)
    labels: dict[str, Any] = Field(default_factory=dict)
    history: list[Address] = Field(default_factory=list)
    counts: dict[int, str] = Field(default_factory=dict)


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Shape(enum.Enum):
    """An enum whose values are tuples: kept as lists, which it cannot read back."""

    SQUARE = (1, 1)
    WIDE = (2, 1)


class ContractTypes(WorkflowState):
    """A state with a field of each kind of type pydantic serializes, for the value tables."""

    workflow_name = "busflow-contract/types"

    key: str = ""
    duration: timedelta = timedelta(0)
    clock: time | None = None
    day: date | None = None
    at: datetime | None = None
    amount: Decimal | None = None
    reference: uuid.UUID | None = None
    raw: bytes = b""
    priority: Priority = Priority.LOW
    level: Level = Level.LOW
    ip: IPv4Address | None = None
    network: IPv6Network | None = None
    url: HttpUrl | None = None
    path: PurePosixPath | None = None
    pair: tuple[int, str] | None = None
    tags: frozenset[str] = frozenset()
    counts: dict[int, str] = Field(default_factory=dict)
    by_day: dict[date, int] = Field(default_factory=dict)
    choice: Literal["yes", "no"] = "no"
    address: Address | None = None
    anything: dict[str, Any] = Field(default_factory=dict)
    shape: Shape | None = None
    mixed_keys: dict[int | str, str] = Field(default_factory=dict)


class ContractMessage(Message):
    """A message whose ``value`` the contract's mappings look up."""

    value: Any = None


S = TypeVar("S", bound=WorkflowState)


def _mapping(maps_to: str) -> MessageWorkflowMapping[ContractMessage, Any]:
    return MessageWorkflowMapping(
        lookup=lambda message, _attributes: message.value, maps_to=maps_to
    )


BY_ORDER_ID = _mapping("order_id")
BY_CUSTOMER = _mapping("customer")
BY_WORKFLOW_ID = _mapping("workflow_id")
BY_KEY = _mapping("key")
ATTRIBUTES = MessageAttributes()


class CounterStarted(Message):
    message_name = "busflow-contract.CounterStarted"
    key: str


class Bumped(Message):
    message_name = "busflow-contract.Bumped"
    key: str
    n: int


class Finished(Message):
    message_name = "busflow-contract.Finished"
    key: str


class Done(Message):
    message_name = "busflow-contract.Done"
    key: str


class ContractCounter(WorkflowState):
    workflow_name = "busflow-contract/counter"

    key: str = ""
    seen: list[int] = Field(default_factory=list)


BY_COUNTER_KEY: MessageWorkflowMapping[Any, ContractCounter] = MessageWorkflowMapping(
    lambda message, _attributes: message.key, "key"
)


class CounterWorkflow(Workflow[ContractCounter]):
    """Counts the ``n`` of each Bumped; Finished completes it and sends Done."""

    def __init__(self) -> None:
        self.runs = 0

    def configure_workflow(self, mapper: WorkflowMapper[ContractCounter]) -> None:
        (
            mapper.with_state(ContractCounter)
            .started_by(CounterStarted, self.started)
            .when(Bumped, self.bumped, BY_COUNTER_KEY)
            .when(Finished, self.finished, BY_COUNTER_KEY)
        )

    async def started(
        self, message: CounterStarted, state: ContractCounter, _a: MessageAttributes
    ) -> dict[str, Any]:
        self.runs += 1
        return {"key": message.key}

    async def bumped(
        self, message: Bumped, state: ContractCounter, _a: MessageAttributes
    ) -> dict[str, Any]:
        self.runs += 1
        return {"seen": [*state.seen, message.n]}

    async def finished(
        self, message: Finished, state: ContractCounter, _a: MessageAttributes
    ) -> dict[str, Any]:
        self.runs += 1
        await self.bus.send(Done(key=state.key))
        return self.complete_workflow()


class Armed(Message):
    message_name = "busflow-contract.Armed"
    key: str
    seconds: float


class Expired(Message):
    message_name = "busflow-contract.Expired"
    key: str


class Disarmed(Message):
    message_name = "busflow-contract.Disarmed"
    key: str


class ContractAlarm(WorkflowState):
    workflow_name = "busflow-contract/alarm"

    key: str = ""
    expired: bool = False


BY_ALARM_KEY: MessageWorkflowMapping[Any, ContractAlarm] = MessageWorkflowMapping(
    lambda message, _attributes: message.key, "key"
)


class AlarmWorkflow(Workflow[ContractAlarm]):
    """Armed asks for a timeout addressed to itself; Expired completes it, unless Disarmed
    completed it first."""

    def __init__(self) -> None:
        self.expiries: list[str] = []

    def configure_workflow(self, mapper: WorkflowMapper[ContractAlarm]) -> None:
        (
            mapper.with_state(ContractAlarm)
            .started_by(Armed, self.armed)
            .when(Expired, self.expired)
            .when(Disarmed, self.disarmed, BY_ALARM_KEY)
        )

    async def armed(self, message: Armed, state: ContractAlarm, _a: MessageAttributes) -> Any:
        await self.request_timeout(
            Expired(key=message.key), after=timedelta(seconds=message.seconds)
        )
        return {"key": message.key}

    async def expired(self, message: Expired, state: ContractAlarm, _a: MessageAttributes) -> Any:
        self.expiries.append(message.key)
        return self.complete_workflow(expired=True)

    async def disarmed(self, message: Disarmed, state: ContractAlarm, _a: MessageAttributes) -> Any:
        return self.complete_workflow()


class QuoteAsked(Message):
    message_name = "busflow-contract.QuoteAsked"
    key: str


class PriceRequested(Message):
    message_name = "busflow-contract.PriceRequested"
    key: str


class LookUpPrice(Message):
    message_name = "busflow-contract.LookUpPrice"
    key: str


class PriceFound(Message):
    message_name = "busflow-contract.PriceFound"
    price: int


class PriceQuoted(Message):
    message_name = "busflow-contract.PriceQuoted"
    price: int


class QuoteTaken(Message):
    message_name = "busflow-contract.QuoteTaken"


class ContractQuote(WorkflowState):
    workflow_name = "busflow-contract/quote"

    key: str = ""
    price: int | None = None


class ContractPricing(WorkflowState):
    workflow_name = "busflow-contract/pricing"

    key: str = ""
    taken: bool = False


class QuoteWorkflow(Workflow[ContractQuote]):
    """Asks another workflow for a price; its reply and thanks come back by workflow id."""

    def configure_workflow(self, mapper: WorkflowMapper[ContractQuote]) -> None:
        mapper.with_state(ContractQuote).started_by(QuoteAsked, self.asked).when(
            PriceQuoted, self.quoted
        )

    async def asked(self, message: QuoteAsked, state: ContractQuote, _a: MessageAttributes) -> Any:
        await self.bus.send(PriceRequested(key=message.key))
        return {"key": message.key}

    async def quoted(
        self, message: PriceQuoted, state: ContractQuote, attributes: MessageAttributes
    ) -> Any:
        await self.reply(attributes, QuoteTaken())
        return self.complete_workflow(price=message.price)


class PricingWorkflow(Workflow[ContractPricing]):
    """Started by another workflow's message; replies to it from a later handler."""

    def configure_workflow(self, mapper: WorkflowMapper[ContractPricing]) -> None:
        (
            mapper.with_state(ContractPricing)
            .started_by(PriceRequested, self.requested)
            .when(PriceFound, self.found)
            .when(QuoteTaken, self.taken)
        )

    async def requested(
        self, message: PriceRequested, state: ContractPricing, _a: MessageAttributes
    ) -> Any:
        await self.bus.send(LookUpPrice(key=message.key))
        return {"key": message.key}

    async def found(
        self, message: PriceFound, state: ContractPricing, _a: MessageAttributes
    ) -> Any:
        await self.reply_to_originator(state, PriceQuoted(price=message.price))

    async def taken(
        self, message: QuoteTaken, state: ContractPricing, _a: MessageAttributes
    ) -> Any:
        return self.complete_workflow(taken=True)


class _Lent:
    """The contract's persistence, lent to a bus: the bus neither opens nor closes it."""

    def __init__(self, persistence: Persistence) -> None:
        self._persistence = persistence

    def prepare(self, core_dependencies: CoreDependencies) -> None:
        self._persistence.prepare(core_dependencies)

    async def initialize_workflow(
        self,
        state_type: type[WorkflowState],
        mappings: Sequence[MessageWorkflowMapping[Any, Any]],
    ) -> None:
        await self._persistence.initialize_workflow(state_type, mappings)

    async def get_workflow_state(
        self,
        state_type: type[S],
        mapping: MessageWorkflowMapping[Any, Any],
        message: Message,
        attributes: MessageAttributes,
        include_completed: bool = False,
    ) -> list[S]:
        return await self._persistence.get_workflow_state(
            state_type, mapping, message, attributes, include_completed
        )

    async def save_workflow_state(self, state: WorkflowState) -> None:
        await self._persistence.save_workflow_state(state)

    async def clear_outbox(
        self, state_type: type[WorkflowState], workflow_id: str, message_ids: Sequence[str]
    ) -> None:
        clear = getattr(self._persistence, "clear_outbox", None)
        if clear is not None:
            await clear(state_type, workflow_id, message_ids)


class _LentTimeoutStore(_Lent):
    """A lent persistence that also stores messages for later."""

    def __init__(self, persistence: Persistence, timeouts: TimeoutStore) -> None:
        super().__init__(persistence)
        self._timeouts = timeouts

    async def schedule_messages(self, messages: Sequence[ScheduledMessage]) -> None:
        await self._timeouts.schedule_messages(messages)

    async def claim_due_messages(
        self, now: datetime, *, owner: str, lease: timedelta, limit: int
    ) -> list[ClaimedMessage]:
        return await self._timeouts.claim_due_messages(now, owner=owner, lease=lease, limit=limit)

    async def remove_claimed_message(self, claimed: ClaimedMessage) -> None:
        await self._timeouts.remove_claimed_message(claimed)


@runtime_checkable
class WorkflowReader(Protocol):
    """A persistence's read API (``find_workflow`` and ``find_workflows``), which it may offer."""

    async def find_workflow(self, state_type: type[S], workflow_id: str) -> S | None: ...

    async def find_workflows(
        self,
        state_type: type[S],
        field_name: str,
        value: object,
        *,
        include_completed: bool = True,
    ) -> list[S]: ...


def lent(persistence: Persistence) -> _Lent:
    """``persistence`` for a bus that must neither open nor close it."""
    if isinstance(persistence, TimeoutStore):
        return _LentTimeoutStore(persistence, persistence)
    return _Lent(persistence)


def new_order(**fields: Any) -> ContractOrder:
    return ContractOrder.model_validate({"workflow_id": str(uuid.uuid4()), **fields}, by_name=True)


# The value tables


_texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_keys = _texts.filter(lambda key: not key.startswith("$") and "." not in key and "\x00" not in key)
_int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)
_instants = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_zones
).map(lambda moment: moment.replace(microsecond=moment.microsecond // 1000 * 1000))
_decimals = st.one_of(
    [
        st.decimals(places=places, min_value=-(10**20), max_value=10**20, allow_nan=False)
        for places in (0, 2, 9)
    ]
)
_json_like = st.recursive(
    st.none() | st.booleans() | _int64 | st.floats(allow_nan=False) | _texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_keys, children, max_size=3),
    max_leaves=8,
)
_anything = st.dictionaries(
    _keys, _json_like | _instants | _decimals | st.uuids() | st.binary(max_size=8), max_size=4
)
_path_parts = _texts.filter(lambda part: part and "/" not in part and "\x00" not in part)

contract_types = st.builds(
    ContractTypes,
    workflow_id=st.just("replaced-by-the-test"),
    duration=st.timedeltas(min_value=timedelta(days=-(10**6)), max_value=timedelta(days=10**6)),
    clock=st.none() | st.times(),
    day=st.none() | st.dates(),
    at=st.none() | _instants,
    amount=st.none() | _decimals,
    reference=st.none() | st.uuids(),
    raw=st.binary(max_size=16),
    priority=st.sampled_from(Priority),
    level=st.sampled_from(Level),
    ip=st.none() | st.ip_addresses(v=4),
    network=st.none() | st.ip_addresses(v=6).map(IPv6Network),
    url=st.none()
    | st.sampled_from(
        ["https://example.com/", "http://例え.jp/路径?q=1", "https://user@host.test:8443/a/b#x"]
    ).map(HttpUrl),
    path=st.none()
    | st.lists(_path_parts, max_size=3).map(lambda parts: PurePosixPath("/", *parts)),
    pair=st.none() | st.tuples(_int64, _texts),
    tags=st.frozensets(_texts, max_size=4),
    counts=st.dictionaries(_int64, _texts, max_size=3),
    by_day=st.dictionaries(st.dates(), _int64, max_size=3),
    choice=st.sampled_from(["yes", "no"]),
    address=st.none() | st.builds(Address, street=_texts, tags=st.lists(_texts, max_size=3)),
    anything=_anything,
)
"""States whose every field pydantic serializes; every persistence must give them back equal."""


def _nested(levels: int) -> dict[str, Any]:
    """``{"a": {"a": ... 1}}``, ``levels`` dicts deep."""
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value  # type: ignore[no-any-return]


REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "a lone surrogate in text": ({"anything": {"note": "caf\udce9"}}, "anything.note"),
    "a lone surrogate in a key": ({"anything": {"caf\udce9": 1}}, "anything['caf\\udce9']"),
    "a lone surrogate in the workflow id": ({"workflow_id": "wf-\ud800"}, "workflow_id"),
    "a key that starts with $": ({"anything": {"$where": "sleep(1000)"}}, "anything['$where']"),
    "a key that holds a dot": ({"anything": {"a.b": 1}}, "anything['a.b']"),
    "a key that holds NUL": ({"anything": {"a\x00b": 1}}, "anything['a\\x00b']"),
    "a bad key deep inside": ({"anything": {"deep": [{"$set": 1}]}}, "anything.deep[0]['$set']"),
    "keys 1 and '1'": ({"mixed_keys": {1: "int", "1": "str"}}, "mixed_keys['1']"),
    "keys '1' and 1": ({"mixed_keys": {"1": "str", 1: "int"}}, "mixed_keys[1]"),
    "an integer of 2**64": ({"pair": (2**64, "x")}, "pair[0]"),
    "an integer below -2**63": ({"anything": {"n": -(2**63) - 1}}, "anything.n"),
    "a Decimal beyond Decimal128": ({"amount": Decimal("1." + "1" * 40)}, "amount"),
    "a datetime before the year 1 in UTC": (
        {"at": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))},
        "at",
    ),
    "a datetime after 9999 in UTC": (
        {"at": datetime(9999, 12, 31, 23, 30, tzinfo=timezone(-timedelta(hours=1)))},
        "at",
    ),
    "nesting deeper than 100 levels": ({"anything": _nested(100)}, "anything" + ".a" * 99),
    "a document over 16 MiB": ({"anything": {"big": "x" * 16 * 1024 * 1024}}, "anything"),
    "an enum with tuple values": ({"shape": Shape.SQUARE}, "shape"),
    "an enum in a field typed Any": ({"anything": {"p": Priority.HIGH}}, "anything.p"),
    "a tuple in a field typed Any": ({"anything": {"t": (1, 2)}}, "anything.t"),
    "a timedelta in a field typed Any": ({"anything": {"d": timedelta(days=1)}}, "anything.d"),
    "a date in a field typed Any": ({"anything": {"d": date(2026, 1, 1)}}, "anything.d"),
    "a value pydantic cannot serialize": ({"anything": {"o": object()}}, "anything.o"),
}
"""Values that every persistence refuses with ``InvalidStateValueError`` on saving: the
changes to a state, and the path of the field the error names."""

_AT = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
_REFERENCE = uuid.UUID("12345678-1234-5678-1234-567812345678")
_DAY = date(2026, 2, 28)
LOOKUPS: dict[str, tuple[str, object, object, bool]] = {
    "an enum by its member": ("priority", Priority.HIGH, Priority.HIGH, True),
    "an enum by its value": ("priority", Priority.HIGH, "high", True),
    "an enum not by its name": ("priority", Priority.HIGH, "HIGH", False),
    "an enum by another member": ("priority", Priority.HIGH, Priority.LOW, False),
    "an int enum by its number": ("level", Level.HIGH, 2, True),
    "a datetime with microseconds": ("at", _AT, _AT, True),
    "a datetime in the same millisecond": ("at", _AT, _AT.replace(microsecond=123999), True),
    "a datetime in the next millisecond": ("at", _AT, _AT.replace(microsecond=124000), False),
    "the same instant in another zone": (
        "at",
        _AT,
        _AT.astimezone(timezone(timedelta(hours=2))),
        True,
    ),
    "a naive datetime, taken as UTC": ("at", _AT, _AT.replace(tzinfo=None), True),
    "a date": ("day", _DAY, _DAY, True),
    "a date by its midnight in UTC": ("day", _DAY, datetime(2026, 2, 28, tzinfo=UTC), True),
    "a Decimal": ("amount", Decimal("1234.50"), Decimal("1234.50"), True),
    "another Decimal": ("amount", Decimal("1234.50"), Decimal("1234.51"), False),
    "a Decimal by its text": ("amount", Decimal("1234.50"), "1234.50", False),
    "a UUID": ("reference", _REFERENCE, _REFERENCE, True),
    "a UUID by its text": ("reference", _REFERENCE, str(_REFERENCE), False),
    "a timedelta": ("duration", timedelta(minutes=5), timedelta(minutes=5), True),
    "an IP address by its text": ("ip", IPv4Address("10.0.0.1"), "10.0.0.1", True),
}
"""Lookups that find a state on every persistence, or on none: the field, the value saved,
the value looked up, and whether it finds the state."""


class PersistenceContract:
    """Tests every persistence must pass. Override the ``persistence`` fixture."""

    @pytest.fixture
    def persistence(self) -> Persistence:
        raise NotImplementedError("override the persistence fixture in your subclass")

    @pytest.fixture
    async def store(self, persistence: Persistence) -> Persistence:
        await persistence.initialize_workflow(ContractOrder, [BY_ORDER_ID, BY_CUSTOMER])
        await persistence.initialize_workflow(ContractValues, [BY_KEY])
        return persistence

    @staticmethod
    def counter_bus(
        store: Persistence,
        done: list[tuple[str | None, str]],
        workflow: CounterWorkflow | None = None,
    ) -> Bus:
        """A bus on ``store`` running ``CounterWorkflow``; Done messages land in ``done``."""

        async def on_done(message: Done, attributes: MessageAttributes) -> None:
            done.append((attributes.message_id, message.key))

        return (
            Bus.configure()
            .with_persistence(lent(store))
            .with_workflow(workflow or CounterWorkflow())
            .with_handler(Done, on_done)
            .with_concurrency(4)
            .build()
        )

    @staticmethod
    def alarm_bus(store: Persistence, workflow: AlarmWorkflow | None = None) -> Bus:
        """A bus on ``store`` running ``AlarmWorkflow``, polling for timeouts often."""
        return (
            Bus.configure()
            .with_persistence(lent(store))
            .with_workflow(workflow or AlarmWorkflow())
            .with_concurrency(8)
            .with_timeout_polling(interval=0.05, max_interval=0.2)
            .build()
        )

    @staticmethod
    async def alarms(store: Persistence, keys: Sequence[str]) -> list[ContractAlarm]:
        found: list[ContractAlarm] = []
        for key in keys:
            found += await store.get_workflow_state(
                ContractAlarm, BY_ALARM_KEY, Disarmed(key=key), ATTRIBUTES, True
            )
        return found

    async def until_complete(
        self,
        store: Persistence,
        keys: Sequence[str],
        *workflows: AlarmWorkflow,
        within: float = 20,
    ) -> list[ContractAlarm]:
        """The alarms once all are complete; fails if that takes longer than ``within`` s.

        With ``workflows`` given, it waits for their handlers to have seen every key before
        it reads the store, which spares a slow store hundreds of lookups a second.
        """
        deadline = asyncio.get_running_loop().time() + within
        while True:
            seen = {key for workflow in workflows for key in workflow.expiries}
            if not workflows or seen >= set(keys):
                alarms = await self.alarms(store, keys)
                if len(alarms) == len(keys) and all(
                    alarm.workflow_status == WorkflowStatus.COMPLETE for alarm in alarms
                ):
                    return alarms
            assert asyncio.get_running_loop().time() < deadline, "the timeouts did not all fire"
            await asyncio.sleep(0.1)

    @staticmethod
    def timeout_store(store: Persistence) -> TimeoutStore:
        if not isinstance(store, TimeoutStore):
            pytest.skip(f"{type(store).__name__} is not a TimeoutStore (it is optional)")
        return store

    @staticmethod
    async def counters(store: Persistence, key: str) -> list[ContractCounter]:
        return await store.get_workflow_state(
            ContractCounter, BY_COUNTER_KEY, Finished(key=key), ATTRIBUTES, True
        )

    @pytest.fixture
    async def types_store(self, store: Persistence) -> Persistence:
        await store.initialize_workflow(ContractTypes, [BY_KEY])
        return store

    async def find(
        self,
        store: Persistence,
        mapping: MessageWorkflowMapping[Any, Any],
        value: object,
        *,
        state_type: type[WorkflowState] = ContractOrder,
        include_completed: bool = False,
    ) -> list[Any]:
        return await store.get_workflow_state(
            state_type, mapping, ContractMessage(value=value), ATTRIBUTES, include_completed
        )

    # creating and finding

    async def test_a_saved_state_is_found_through_each_mapping(self, store: Persistence) -> None:
        order = new_order(order_id="o-1", customer="c-1", items=["apple"])
        await store.save_workflow_state(order)

        for mapping, value in [
            (BY_ORDER_ID, "o-1"),
            (BY_CUSTOMER, "c-1"),
            (BY_WORKFLOW_ID, order.workflow_id),
        ]:
            [found] = await self.find(store, mapping, value)
            assert found.workflow_id == order.workflow_id
            assert found.order_id == "o-1"
            assert found.customer == "c-1"
            assert found.items == ["apple"]
            assert found.workflow_version == 1
            assert found.workflow_status is WorkflowStatus.RUNNING

    async def test_a_lookup_finds_every_matching_state_and_nothing_else(
        self, store: Persistence
    ) -> None:
        mine = [new_order(order_id=f"o-{n}", customer="c-many") for n in range(3)]
        for order in [*mine, new_order(order_id="o-x", customer="c-other")]:
            await store.save_workflow_state(order)

        found = await self.find(store, BY_CUSTOMER, "c-many")

        assert sorted(state.order_id for state in found) == ["o-0", "o-1", "o-2"]
        assert await self.find(store, BY_CUSTOMER, "c-nobody") == []

    async def test_a_lookup_returns_large_results_whole(self, store: Persistence) -> None:
        for n in range(250):
            await store.save_workflow_state(new_order(order_id=f"o-{n}", customer="c-big"))

        found = await self.find(store, BY_CUSTOMER, "c-big")

        assert len(found) == 250
        assert len({state.workflow_id for state in found}) == 250

    async def test_a_lookup_of_none_returns_nothing(self, store: Persistence) -> None:
        await store.save_workflow_state(new_order(order_id="o-1"))  # customer is None

        assert await self.find(store, BY_CUSTOMER, None) == []

    async def test_a_lookup_value_is_compared_by_equality_only(self, store: Persistence) -> None:
        await store.save_workflow_state(new_order(order_id="o-1"))
        literal = new_order(order_id="$ne")
        await store.save_workflow_state(literal)

        [found] = await self.find(store, BY_ORDER_ID, "$ne")
        assert found.workflow_id == literal.workflow_id
        assert await self.find(store, BY_ORDER_ID, "$where") == []

    @pytest.mark.parametrize(
        ("field", "saved", "lookup", "finds"), LOOKUPS.values(), ids=list(LOOKUPS)
    )
    async def test_a_lookup_finds_the_same_states_on_every_persistence(
        self, types_store: Persistence, field: str, saved: object, lookup: object, finds: bool
    ) -> None:
        state = ContractTypes.model_validate({"workflow_id": str(uuid.uuid4()), field: saved})
        await types_store.save_workflow_state(state)

        found = await self.find(types_store, _mapping(field), lookup, state_type=ContractTypes)

        assert [each.workflow_id for each in found] == ([state.workflow_id] if finds else [])

    @pytest.mark.parametrize(
        ("mapping", "value"),
        [
            (BY_ORDER_ID, "caf\udce9"),
            (BY_WORKFLOW_ID, "wf-\ud800"),
            (BY_ORDER_ID, 2**64),
            (BY_ORDER_ID, Decimal("1." + "1" * 40)),
        ],
        ids=["a lone surrogate", "a lone surrogate for an id", "2**64", "a long Decimal"],
    )
    async def test_a_lookup_value_no_state_may_hold_is_refused(
        self, store: Persistence, mapping: MessageWorkflowMapping[Any, Any], value: object
    ) -> None:
        await store.save_workflow_state(new_order(order_id="o-1"))

        with pytest.raises(InvalidLookupValueError, match=mapping.maps_to):
            await self.find(store, mapping, value)

    @pytest.mark.parametrize("value", [{"$ne": None}, ["o-1"], {"$gt": ""}])
    async def test_a_structured_lookup_value_is_refused(
        self, store: Persistence, value: object
    ) -> None:
        await store.save_workflow_state(new_order(order_id="o-1"))

        with pytest.raises(InvalidLookupValueError, match="order_id"):
            await self.find(store, BY_ORDER_ID, value)

    async def test_running_states_only_unless_completed_are_asked_for(
        self, store: Persistence
    ) -> None:
        running = new_order(order_id="o-1", customer="c-1")
        done = new_order(order_id="o-2", customer="c-1")
        await store.save_workflow_state(running)
        await store.save_workflow_state(done)
        [stored_done] = await self.find(store, BY_ORDER_ID, "o-2")
        await store.save_workflow_state(
            stored_done.model_copy(update={"workflow_status": WorkflowStatus.COMPLETE})
        )

        assert [s.order_id for s in await self.find(store, BY_CUSTOMER, "c-1")] == ["o-1"]
        assert await self.find(store, BY_ORDER_ID, "o-2") == []
        [completed] = await self.find(store, BY_ORDER_ID, "o-2", include_completed=True)
        assert completed.workflow_status is WorkflowStatus.COMPLETE
        assert completed.workflow_version == 2
        both = await self.find(store, BY_CUSTOMER, "c-1", include_completed=True)
        assert sorted(s.order_id for s in both) == ["o-1", "o-2"]

    # reading workflows: by id or a field's value, with no message and no mapping

    @staticmethod
    def reader(store: Persistence) -> WorkflowReader:
        if not isinstance(store, WorkflowReader):
            pytest.skip(
                f"{type(store).__name__} has no find_workflow (it is optional: "
                "bus.find_workflow reads any persistence)"
            )
        return store

    @staticmethod
    async def complete(store: Persistence, order: ContractOrder) -> None:
        """Save ``order`` (new) and then save it completed."""
        await store.save_workflow_state(order)
        await store.save_workflow_state(
            order.model_copy(
                update={"workflow_version": 1, "workflow_status": WorkflowStatus.COMPLETE}
            )
        )

    async def test_a_workflow_is_read_by_its_id_completed_or_not(self, store: Persistence) -> None:
        running = new_order(order_id="o-1", customer="c-1", items=["apple"])
        done = new_order(order_id="o-2")
        await store.save_workflow_state(running)
        await self.complete(store, done)
        reader = self.reader(store)

        found = await reader.find_workflow(ContractOrder, running.workflow_id)
        completed = await reader.find_workflow(ContractOrder, done.workflow_id)

        assert found is not None
        assert (found.order_id, found.customer, found.items) == ("o-1", "c-1", ["apple"])
        assert found.workflow_version == 1
        assert completed is not None
        assert completed.workflow_status is WorkflowStatus.COMPLETE
        assert await reader.find_workflow(ContractOrder, "no-such-workflow") is None
        assert await reader.find_workflow(ContractValues, running.workflow_id) is None

    async def test_workflows_are_read_by_a_fields_value_with_or_without_completed(
        self, store: Persistence
    ) -> None:
        await store.save_workflow_state(new_order(order_id="o-1", customer="c-1"))
        await self.complete(store, new_order(order_id="o-2", customer="c-1"))
        await store.save_workflow_state(new_order(order_id="o-3", customer="c-other"))
        reader = self.reader(store)

        every = await reader.find_workflows(ContractOrder, "customer", "c-1")
        running = await reader.find_workflows(
            ContractOrder, "customer", "c-1", include_completed=False
        )

        assert sorted(order.order_id for order in every) == ["o-1", "o-2"]
        assert [order.order_id for order in running] == ["o-1"]
        assert await reader.find_workflows(ContractOrder, "customer", "c-nobody") == []
        assert await reader.find_workflows(ContractOrder, "customer", None) == []

    async def test_workflows_are_read_by_a_field_no_mapping_names(self, store: Persistence) -> None:
        await store.save_workflow_state(ContractValues(workflow_id="v-1", key="k", text="hello"))

        [found] = await self.reader(store).find_workflows(ContractValues, "text", "hello")

        assert found.workflow_id == "v-1"

    @pytest.mark.parametrize("field", ["colour", "customerRef", "workflow_status"])
    async def test_reading_by_a_field_the_state_cannot_be_looked_up_by_names_the_fields(
        self, store: Persistence, field: str
    ) -> None:
        with pytest.raises(ConfigurationError, match=field) as raised:
            await self.reader(store).find_workflows(ContractOrder, field, "x")

        assert "order_id" in str(raised.value)

    @pytest.mark.parametrize("value", [{"$ne": None}, ["o-1"], {"$gt": ""}])
    async def test_reading_by_a_structured_value_is_refused(
        self, store: Persistence, value: object
    ) -> None:
        await store.save_workflow_state(new_order(order_id="o-1"))

        with pytest.raises(InvalidLookupValueError, match="order_id"):
            await self.reader(store).find_workflows(ContractOrder, "order_id", value)

    async def test_the_bus_reads_workflows_from_its_persistence(self, store: Persistence) -> None:
        order = new_order(order_id="o-1", customer="c-1")
        await store.save_workflow_state(order)
        bus = Bus.configure().with_persistence(lent(store)).build()

        found = await bus.find_workflow(ContractOrder, order.workflow_id)
        by_customer = await bus.find_workflows(ContractOrder, "customer", "c-1")

        assert found is not None
        assert found.order_id == "o-1"
        assert [each.workflow_id for each in by_customer] == [order.workflow_id]

    # replies between workflows

    async def test_a_workflow_replies_to_its_originator_and_to_a_sender(
        self, store: Persistence
    ) -> None:
        async def price_of(message: LookUpPrice, attributes: MessageAttributes) -> None:
            # A plain handler: its reply finds the pricing workflow by the sticky workflow id.
            await bus.send(PriceFound(price=len(message.key)))

        bus = (
            Bus.configure()
            .with_persistence(lent(store))
            .with_workflow(QuoteWorkflow())
            .with_workflow(PricingWorkflow())
            .with_handler(LookUpPrice, price_of)
            .with_retry_policy(RetryPolicy(max_attempts=1))
            .build()
        )
        async with bus:
            await bus.send(QuoteAsked(key="seven"))
            await bus.wait_until_idle(timeout=10)

        [quote] = await bus.find_workflows(ContractQuote, "key", "seven")
        [pricing] = await bus.find_workflows(ContractPricing, "key", "seven")
        assert (quote.workflow_status, quote.price) == (WorkflowStatus.COMPLETE, 5)
        assert (pricing.workflow_status, pricing.taken) == (WorkflowStatus.COMPLETE, True)
        assert pricing.workflow_originator is not None
        assert pricing.workflow_originator.workflow_id == quote.workflow_id
        assert bus.metrics.dead_letters == bus.metrics.unmatched == 0

    # versions and conflicts

    async def test_each_save_increments_the_version(self, store: Persistence) -> None:
        order = new_order(order_id="o-1")
        await store.save_workflow_state(order)
        for expected_version in (1, 2, 3):
            [stored] = await self.find(store, BY_ORDER_ID, "o-1")
            assert stored.workflow_version == expected_version
            await store.save_workflow_state(
                stored.model_copy(update={"items": ["x"] * expected_version})
            )

        [final] = await self.find(store, BY_ORDER_ID, "o-1")
        assert final.workflow_version == 4
        assert final.items == ["x", "x", "x"]

    async def test_a_save_that_returns_a_state_returns_it_as_a_read_would(
        self, store: Persistence
    ) -> None:
        """What a save returns is what the bus's state cache hands the workflow's next
        handler instead of a read: it must be exactly what a read returns, and a new object."""
        order = new_order(order_id="o-1", customerRef="c-1", items=["a"])
        for _ in range(2):
            returned = await store.save_workflow_state(order)
            [read] = await self.find(store, BY_ORDER_ID, "o-1")
            if returned is None:
                return  # this persistence is read each time
            assert returned == read
            assert isinstance(returned, ContractOrder)
            assert returned is not order
            assert returned.items is not order.items
            order = returned.model_copy(update={"items": [*returned.items, "x"]})

    async def test_a_stale_save_conflicts_and_changes_nothing(self, store: Persistence) -> None:
        await store.save_workflow_state(new_order(order_id="o-1"))
        [first_read] = await self.find(store, BY_ORDER_ID, "o-1")
        [second_read] = await self.find(store, BY_ORDER_ID, "o-1")
        await store.save_workflow_state(first_read.model_copy(update={"items": ["winner"]}))

        with pytest.raises(WorkflowConcurrencyError) as raised:
            await store.save_workflow_state(second_read.model_copy(update={"items": ["loser"]}))

        assert raised.value.workflow_id == second_read.workflow_id
        assert raised.value.expected_version == 1
        assert second_read.workflow_id in str(raised.value)
        [stored] = await self.find(store, BY_ORDER_ID, "o-1")
        assert stored.items == ["winner"]
        assert stored.workflow_version == 2

    async def test_creating_an_existing_id_conflicts(self, store: Persistence) -> None:
        order = new_order(order_id="o-1")
        await store.save_workflow_state(order)

        with pytest.raises(WorkflowConcurrencyError) as raised:
            await store.save_workflow_state(order.model_copy(update={"order_id": "o-2"}))

        assert raised.value.workflow_id == order.workflow_id
        [stored] = await self.find(store, BY_WORKFLOW_ID, order.workflow_id)
        assert stored.order_id == "o-1"

    async def test_updating_a_missing_state_conflicts(self, store: Persistence) -> None:
        ghost = new_order(order_id="o-ghost").model_copy(update={"workflow_version": 3})

        with pytest.raises(WorkflowConcurrencyError):
            await store.save_workflow_state(ghost)

        assert await self.find(store, BY_ORDER_ID, "o-ghost") == []

    async def test_of_concurrent_saves_of_one_version_exactly_one_wins(
        self, store: Persistence
    ) -> None:
        await store.save_workflow_state(new_order(order_id="o-1"))
        [read] = await self.find(store, BY_ORDER_ID, "o-1")
        attempts = [read.model_copy(update={"items": [f"writer-{n}"]}) for n in range(10)]

        results = await asyncio.gather(
            *(store.save_workflow_state(attempt) for attempt in attempts), return_exceptions=True
        )

        winners = [n for n, result in enumerate(results) if not isinstance(result, Exception)]
        assert len(winners) == 1, results
        losers = [result for n, result in enumerate(results) if n not in winners]
        assert all(isinstance(result, WorkflowConcurrencyError) for result in losers)
        [stored] = await self.find(store, BY_ORDER_ID, "o-1")
        assert stored.items == [f"writer-{winners[0]}"]
        assert stored.workflow_version == 2

    async def test_concurrent_creates_of_one_id_exactly_one_wins(self, store: Persistence) -> None:
        workflow_id = str(uuid.uuid4())
        attempts = [
            new_order(order_id=f"o-{n}").model_copy(update={"workflow_id": workflow_id})
            for n in range(5)
        ]

        results = await asyncio.gather(
            *(store.save_workflow_state(attempt) for attempt in attempts), return_exceptions=True
        )

        assert sum(not isinstance(result, Exception) for result in results) == 1, results
        assert len(await self.find(store, BY_WORKFLOW_ID, workflow_id)) == 1

    # copies, not live objects

    async def test_saving_never_changes_the_callers_state(self, store: Persistence) -> None:
        order = new_order(order_id="o-1", items=["a"])
        before = order.model_dump()

        await store.save_workflow_state(order)
        order.items.append("changed after saving")

        assert order.workflow_version == before["workflow_version"] == 0
        [stored] = await self.find(store, BY_ORDER_ID, "o-1")
        assert stored.items == ["a"]

    async def test_found_states_are_copies(self, store: Persistence) -> None:
        await store.save_workflow_state(new_order(order_id="o-1", items=["a"]))
        [first] = await self.find(store, BY_ORDER_ID, "o-1")

        first.items.append("changed in memory")
        first.order_id = "o-changed"

        [again] = await self.find(store, BY_ORDER_ID, "o-1")
        assert again.items == ["a"]

    # types and isolation

    async def test_state_types_are_isolated(self, store: Persistence) -> None:
        shared_id = str(uuid.uuid4())
        await store.save_workflow_state(
            new_order(order_id="o-1").model_copy(update={"workflow_id": shared_id})
        )
        await store.save_workflow_state(ContractValues(workflow_id=shared_id, key="o-1"))

        [order] = await self.find(store, BY_WORKFLOW_ID, shared_id)
        [values] = await self.find(store, BY_WORKFLOW_ID, shared_id, state_type=ContractValues)
        assert isinstance(order, ContractOrder)
        assert isinstance(values, ContractValues)
        assert values.key == "o-1"

    async def test_values_of_every_type_come_back_as_they_went_in(self, store: Persistence) -> None:
        state = ContractValues(
            workflow_id=str(uuid.uuid4()),
            key="every-type",
            text="grüße, 世界 $ne {}",
            count=-42,
            big=2**62,
            ratio=0.1,
            flag=True,
            nothing=None,
            at=datetime(2026, 11, 25, 21, 39, 14, 123000, tzinfo=UTC),
            day=date(2026, 2, 28),
            amount=Decimal("1234.50"),
            reference=uuid.UUID("12345678-1234-5678-1234-567812345678"),
            priority=Priority.HIGH,
            address=Address(street="1 Main St", tags=["home"]),
            numbers=[1, 2, 3],
            labels={"nested": {"deep": [1, "two", None, True]}, "when": "later"},
            history=[Address(street="old"), Address(street="older", tags=["x"])],
            counts={1: "one", -2: "minus two"},
        )

        await store.save_workflow_state(state)
        [stored] = await self.find(store, BY_KEY, "every-type", state_type=ContractValues)

        expected = state.model_copy(update={"workflow_version": 1})
        assert stored == expected
        assert stored.at is not None
        assert stored.at.utcoffset() == timedelta(0)
        assert type(stored.amount) is Decimal
        assert str(stored.amount) == "1234.50"
        assert type(stored.reference) is uuid.UUID
        assert type(stored.day) is date

    async def test_datetimes_are_kept_to_the_millisecond(self, store: Persistence) -> None:
        precise = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
        await store.save_workflow_state(
            ContractValues(workflow_id=str(uuid.uuid4()), key="precise", at=precise)
        )

        [stored] = await self.find(store, BY_KEY, "precise", state_type=ContractValues)

        assert stored.at == precise.replace(microsecond=123000)

    async def test_an_aware_datetime_in_another_zone_is_the_same_instant(
        self, store: Persistence
    ) -> None:
        plus_two = datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
        await store.save_workflow_state(
            ContractValues(workflow_id=str(uuid.uuid4()), key="zone", at=plus_two)
        )

        [stored] = await self.find(store, BY_KEY, "zone", state_type=ContractValues)

        assert stored.at == plus_two

    # what a state may hold: the same on every persistence

    @settings(
        max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(state=contract_types)
    async def test_any_value_pydantic_serializes_comes_back_equal(
        self, types_store: Persistence, state: ContractTypes
    ) -> None:
        state = state.model_copy(
            update={"workflow_id": str(uuid.uuid4()), "key": str(uuid.uuid4())}
        )

        await types_store.save_workflow_state(state)
        [stored] = await self.find(types_store, BY_KEY, state.key, state_type=ContractTypes)

        assert stored == state.model_copy(update={"workflow_version": 1})

    async def test_a_state_whose_defaults_bson_lacks_starts_and_comes_back(
        self, types_store: Persistence
    ) -> None:
        """``duration: timedelta = timedelta(0)`` once made every start of its workflow fail."""
        state = ContractTypes(workflow_id=str(uuid.uuid4()), key="defaults")

        await types_store.save_workflow_state(state)
        [stored] = await self.find(types_store, BY_KEY, "defaults", state_type=ContractTypes)

        assert stored.duration == timedelta(0)
        assert stored == state.model_copy(update={"workflow_version": 1})

    async def test_nesting_of_a_hundred_levels_is_kept(self, types_store: Persistence) -> None:
        deepest = _nested(99)  # in the field: 100 levels counting the document itself
        state = ContractTypes(workflow_id=str(uuid.uuid4()), key="deep", anything=deepest)

        await types_store.save_workflow_state(state)
        [stored] = await self.find(types_store, BY_KEY, "deep", state_type=ContractTypes)

        assert stored.anything == deepest

    async def test_extra_fields_of_a_state_that_allows_them_come_back(
        self, store: Persistence
    ) -> None:
        class Open(WorkflowState):
            model_config = ConfigDict(extra="allow")
            workflow_name = "busflow-contract/open"

            key: str = ""

        await store.initialize_workflow(Open, [BY_KEY])
        state = Open.model_validate({"workflow_id": str(uuid.uuid4()), "key": "k", "note": [1]})

        await store.save_workflow_state(state)
        [stored] = await self.find(store, BY_KEY, "k", state_type=Open)

        assert stored.model_extra == {"note": [1]}

    @pytest.mark.parametrize(("changes", "field"), REFUSED.values(), ids=list(REFUSED))
    async def test_a_value_that_cannot_be_kept_is_refused_before_anything_is_written(
        self, types_store: Persistence, changes: dict[str, Any], field: str
    ) -> None:
        key = str(uuid.uuid4())
        valid = ContractTypes(workflow_id=str(uuid.uuid4()), key=key)
        await types_store.save_workflow_state(valid)
        [stored] = await self.find(types_store, BY_KEY, key, state_type=ContractTypes)
        attempts = {
            "a new workflow": valid.model_copy(update={"workflow_id": str(uuid.uuid4())}),
            "an update": stored,
            "an update at a stale version": stored.model_copy(update={"workflow_version": 7}),
        }

        for attempt, state in attempts.items():
            with pytest.raises(InvalidStateValueError) as raised:
                await types_store.save_workflow_state(state.model_copy(update=changes))
            assert raised.value.field == field, attempt
            assert f"field {field!r}" in str(raised.value)
            assert str(raised.value).endswith("Nothing was written.")

        assert await self.find(types_store, BY_KEY, key, state_type=ContractTypes) == [stored]

    # setup and logging

    @pytest.mark.parametrize("field", ["workflow_status", "workflow_version"])
    async def test_a_mapping_to_a_field_busflow_sets_is_refused_at_startup(
        self, persistence: Persistence, field: str
    ) -> None:
        with pytest.raises(ConfigurationError, match=field):
            await persistence.initialize_workflow(ContractOrder, [BY_ORDER_ID, _mapping(field)])

    async def test_initialize_workflow_is_idempotent(self, store: Persistence) -> None:
        await store.save_workflow_state(new_order(order_id="o-1"))

        await store.initialize_workflow(ContractOrder, [BY_ORDER_ID, BY_CUSTOMER])
        await store.initialize_workflow(ContractOrder, [BY_ORDER_ID, BY_CUSTOMER])

        assert len(await self.find(store, BY_ORDER_ID, "o-1")) == 1

    async def test_it_logs_under_a_busflow_logger_without_prepare(
        self, store: Persistence, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.DEBUG, logger="busflow"):
            await store.save_workflow_state(new_order(order_id="o-logged"))

        assert any(record.name.startswith("busflow") for record in caplog.records)

    # what a message did, kept with the state: exactly-once effects

    async def test_applied_ids_and_the_outbox_are_kept_with_the_state(
        self, store: Persistence
    ) -> None:
        record = OutboxMessage(
            message_id="out-1",
            name="shop.Shipped",
            body='{"order_id":"o-1"}',
            correlation_id="c-1",
            attributes={"tenant": "t-1"},
            sticky_attributes={"workflow_id": "w-1"},
            publish=True,
            origin="in-1",
        )
        order = new_order(order_id="o-1")
        order.workflow_applied = ["in-0", "in-1"]
        order.workflow_outbox = [record]
        await store.save_workflow_state(order)

        [stored] = await self.find(store, BY_ORDER_ID, "o-1")

        assert stored.workflow_applied == ["in-0", "in-1"]
        assert stored.workflow_outbox == [record]

    async def test_clear_outbox_removes_only_the_messages_named(self, store: Persistence) -> None:
        clear_outbox = getattr(store, "clear_outbox", None)
        if clear_outbox is None:
            pytest.skip("this persistence does not clear outboxes (clear_outbox is optional)")
        records = [
            OutboxMessage(message_id=f"out-{n}", name="shop.Shipped", body="{}", origin="in-1")
            for n in range(3)
        ]
        order = new_order(order_id="o-1")
        order.workflow_outbox = records
        await store.save_workflow_state(order)

        await clear_outbox(ContractOrder, order.workflow_id, ["out-0", "out-2", "elsewhere"])
        await clear_outbox(ContractOrder, "no-such-workflow", ["out-1"])
        [cleared] = await self.find(store, BY_ORDER_ID, "o-1")

        assert cleared.workflow_outbox == [records[1]]
        assert cleared.workflow_version == 1

    async def test_a_redelivered_message_changes_its_workflow_once(
        self, store: Persistence
    ) -> None:
        bus = self.counter_bus(store, [])
        async with bus:
            await bus.send(CounterStarted(key="k"))
            await bus.wait_until_idle(timeout=10)
            again = MessageAttributes(message_id="bump-1")
            await bus.send(Bumped(key="k", n=1), again)
            await bus.wait_until_idle(timeout=10)
            await bus.send(Bumped(key="k", n=1), again)
            await bus.send(Bumped(key="k", n=2))
            await bus.wait_until_idle(timeout=10)

        [counter] = await self.counters(store, "k")
        assert counter.seen == [1, 2]
        assert bus.metrics.duplicates == 1

    async def test_a_redelivered_start_finds_its_workflow(self, store: Persistence) -> None:
        bus = self.counter_bus(store, [])
        async with bus:
            for _ in range(3):
                await bus.send(CounterStarted(key="k"), MessageAttributes(message_id="start-1"))
                await bus.wait_until_idle(timeout=10)

        assert len(await self.counters(store, "k")) == 1
        assert bus.metrics.duplicates == 2

    async def test_a_redelivered_completion_sends_what_it_saved(self, store: Persistence) -> None:
        done: list[tuple[str | None, str]] = []
        workflow = CounterWorkflow()
        bus = self.counter_bus(store, done, workflow)
        async with bus:
            await bus.send(CounterStarted(key="k"))
            await bus.wait_until_idle(timeout=10)
            workflow.runs = 0
            [running] = await self.counters(store, "k")
            # A bus saved the completion, with its outgoing Done, then died before sending it.
            running.workflow_status = WorkflowStatus.COMPLETE
            running.workflow_applied = [*running.workflow_applied, "finish-1"]
            running.workflow_outbox = [
                OutboxMessage(
                    message_id="done-1",
                    name=Done.message_name,
                    body=Done(key="k").model_dump_json(),
                    origin="finish-1",
                )
            ]
            await store.save_workflow_state(running)

            await bus.send(Finished(key="k"), MessageAttributes(message_id="finish-1"))
            await bus.wait_until_idle(timeout=10)

        assert done == [("done-1", "k")]
        assert workflow.runs == 0
        assert bus.metrics.duplicates == 1

    async def test_a_completion_delivered_twice_sends_the_same_message_id(
        self, store: Persistence
    ) -> None:
        done: list[tuple[str | None, str]] = []
        bus = self.counter_bus(store, done)
        async with bus:
            await bus.send(CounterStarted(key="k"))
            await bus.wait_until_idle(timeout=10)
            for _ in range(2):
                await bus.send(Finished(key="k"), MessageAttributes(message_id="finish-1"))
                await bus.wait_until_idle(timeout=10)

        [counter] = await self.counters(store, "k")
        assert counter.workflow_status == WorkflowStatus.COMPLETE
        assert len(done) >= 1
        assert {message_id for message_id, _ in done} == {done[0][0]}

    # timeouts: messages delivered later, stored by a persistence that is a TimeoutStore

    async def test_a_workflow_that_asked_for_a_timeout_completes_when_it_arrives(
        self, store: Persistence
    ) -> None:
        self.timeout_store(store)
        workflow = AlarmWorkflow()
        async with self.alarm_bus(store, workflow) as bus:
            await bus.send(Armed(key="a", seconds=1.0))
            await bus.wait_until_idle(timeout=10)
            [waiting] = await self.alarms(store, ["a"])
            [alarm] = await self.until_complete(store, ["a"])

        assert waiting.workflow_status == WorkflowStatus.RUNNING
        assert alarm.expired is True
        assert workflow.expiries == ["a"]

    async def test_a_timeout_fires_on_a_new_bus_after_the_old_one_is_gone(
        self, store: Persistence
    ) -> None:
        self.timeout_store(store)
        async with self.alarm_bus(store) as first:
            await first.send(Armed(key="a", seconds=0.5))
            await first.wait_until_idle(timeout=10)
        [waiting] = await self.alarms(store, ["a"])

        async with self.alarm_bus(store):
            [alarm] = await self.until_complete(store, ["a"])

        assert waiting.workflow_status == WorkflowStatus.RUNNING
        assert alarm.expired is True

    async def test_two_buses_on_one_store_deliver_each_timeout_once(
        self, store: Persistence
    ) -> None:
        self.timeout_store(store)
        keys = [f"t-{n}" for n in range(500)]
        one, two = AlarmWorkflow(), AlarmWorkflow()
        async with self.alarm_bus(store, one) as first, self.alarm_bus(store, two) as second:
            for n, key in enumerate(keys):
                await (first if n % 2 else second).send(Armed(key=key, seconds=0.5))
            await self.until_complete(store, keys, one, two, within=90)
        delivered = one.expiries + two.expiries

        assert sorted(delivered) == sorted(keys), "each timeout is delivered exactly once"

    async def test_timeouts_leased_by_a_bus_that_died_are_delivered_after_the_lease(
        self, store: Persistence
    ) -> None:
        timeouts = self.timeout_store(store)
        keys = [f"t-{n}" for n in range(5)]
        async with self.alarm_bus(store) as first:
            for key in keys:
                await first.send(Armed(key=key, seconds=0.2))
            await first.wait_until_idle(timeout=10)
        await asyncio.sleep(0.3)
        # A bus claims them with a lease of its own, then dies without delivering them.
        grabbed = await timeouts.claim_due_messages(
            datetime.now(UTC), owner="a-bus-that-died", lease=timedelta(seconds=1), limit=10
        )
        claimed_at = asyncio.get_running_loop().time()

        async with self.alarm_bus(store) as second:
            alarms = await self.until_complete(store, keys)
            delivered_after = asyncio.get_running_loop().time() - claimed_at

        assert len(grabbed) == len(keys)
        assert all(alarm.expired for alarm in alarms)
        assert delivered_after >= 0.9, "nobody delivers a leased timeout before its lease ends"
        assert second.metrics.duplicates == 0

    async def completed(self, store: Persistence, keys: Sequence[str]) -> list[ContractAlarm]:
        return [
            alarm
            for alarm in await self.alarms(store, keys)
            if alarm.workflow_status == WorkflowStatus.COMPLETE
        ]

    async def test_a_timeout_for_a_completed_workflow_is_ignored_and_counted(
        self, store: Persistence
    ) -> None:
        self.timeout_store(store)
        workflow = AlarmWorkflow()
        async with self.alarm_bus(store, workflow) as bus:
            await bus.send(Armed(key="a", seconds=0.3))
            await bus.wait_until_idle(timeout=10)
            await bus.send(Disarmed(key="a"))
            await bus.wait_until_idle(timeout=10)
            for _ in range(100):
                if bus.metrics.timeouts_ignored:
                    break
                await asyncio.sleep(0.05)
        [alarm] = await self.alarms(store, ["a"])

        assert bus.metrics.timeouts_ignored == 1
        assert workflow.expiries == []
        assert alarm.expired is False

    async def test_a_scheduled_message_comes_back_with_everything_it_travels_with(
        self, store: Persistence
    ) -> None:
        timeouts = self.timeout_store(store)
        message = TransportMessage(
            Expired.message_name,
            "whole",
            b'{"key":"a"}',
            correlation_id="c-1",
            attributes={"tenant": "t-1"},
            sticky_attributes={"workflow_id": "w-1"},
            partition_key="a",
        )
        await timeouts.schedule_messages(
            [ScheduledMessage(message, publish=True, due_at=datetime.now(UTC))]
        )

        [claimed] = await timeouts.claim_due_messages(
            datetime.now(UTC) + timedelta(seconds=1),
            owner="me",
            lease=timedelta(seconds=30),
            limit=10,
        )

        assert claimed.scheduled.message == message
        assert claimed.scheduled.publish is True

    async def test_a_message_scheduled_twice_under_one_id_is_stored_once(
        self, store: Persistence
    ) -> None:
        timeouts = self.timeout_store(store)
        scheduled = ScheduledMessage(
            TransportMessage(Expired.message_name, "once", b'{"key":"a"}'),
            publish=False,
            due_at=datetime.now(UTC) - timedelta(seconds=1),
        )
        await timeouts.schedule_messages([scheduled])
        await timeouts.schedule_messages([scheduled])

        claimed = await timeouts.claim_due_messages(
            datetime.now(UTC), owner="me", lease=timedelta(seconds=30), limit=10
        )
        again = await timeouts.claim_due_messages(
            datetime.now(UTC), owner="other", lease=timedelta(seconds=30), limit=10
        )
        for each in claimed:
            await timeouts.remove_claimed_message(each)
        after = await timeouts.claim_due_messages(
            datetime.now(UTC) + timedelta(minutes=1),
            owner="me",
            lease=timedelta(seconds=30),
            limit=10,
        )

        assert [each.scheduled.message.message_id for each in claimed] == ["once"]
        assert claimed[0].scheduled.message.body == b'{"key":"a"}'
        assert again == [], "a leased message is not claimed by another bus"
        assert after == [], "a delivered message is removed"
