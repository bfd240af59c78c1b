"""``InMemoryPersistence``: the reference persistence, kept in this process's memory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Self, TypeVar

from busflow._errors import ConfigurationError, WorkflowConcurrencyError, WorkflowUniquenessError
from busflow._logs import with_fields
from busflow._messages import Message, MessageAttributes
from busflow._persistence import CoreDependencies, WorkflowReads, resolve_lookup
from busflow._timeouts import ClaimedMessage, ScheduledMessage
from busflow._values import lookup_key, store_state, stored_keys
from busflow._workflow import (
    MessageWorkflowMapping,
    StateTypesByName,
    WorkflowState,
    WorkflowStatus,
    check_mapping_fields,
    check_state_type,
    state_from,
)

__all__ = ["InMemoryPersistence"]

S = TypeVar("S", bound=WorkflowState)


def _stored_copy(state: WorkflowState, *, version: int) -> WorkflowState:
    """A copy of ``state`` as MongoDB would give it back; see ``busflow._values``."""
    return store_state(state, version=version, where=type(state).workflow_name).read_back


@dataclass
class _Table:
    """One state type's states, with an index per field that a mapping looks up.

    The index is keyed on ``lookup_key``, which compares values as MongoDB does.
    """

    states: dict[str, WorkflowState] = field(default_factory=dict)
    indexes: dict[str, dict[Hashable, set[str]]] = field(default_factory=dict)

    def index(self, field_name: str) -> None:
        if field_name == "workflow_id" or field_name in self.indexes:
            return
        entries: dict[Hashable, set[str]] = {}
        self.indexes[field_name] = entries
        for state in self.states.values():
            entries.setdefault(lookup_key(getattr(state, field_name)), set()).add(state.workflow_id)

    def find(self, field_name: str, value: object) -> Iterable[WorkflowState]:
        """The states whose ``field_name`` equals ``value``, as MongoDB compares them."""
        if field_name == "workflow_id":
            found = self.states.get(value) if isinstance(value, str) else None
            return () if found is None else (found,)
        key = lookup_key(value)
        entries = self.indexes.get(field_name)
        if entries is None:  # a field no mapping named: look at every state
            return [
                state
                for state in self.states.values()
                if lookup_key(getattr(state, field_name)) == key
            ]
        return [self.states[workflow_id] for workflow_id in entries.get(key, ())]

    def running_holder(self, field_name: str, state: WorkflowState) -> str | None:
        """Another running workflow whose ``field_name`` equals ``state``'s, if there is one."""
        self.index(field_name)
        holders = self.indexes[field_name].get(lookup_key(getattr(state, field_name)), ())
        for workflow_id in holders:
            if (
                workflow_id != state.workflow_id
                and self.states[workflow_id].workflow_status is WorkflowStatus.RUNNING
            ):
                return workflow_id
        return None

    def store(self, state: WorkflowState) -> None:
        old = self.states.get(state.workflow_id)
        for field_name, entries in self.indexes.items():
            key = lookup_key(getattr(state, field_name))
            if old is not None:
                old_key = lookup_key(getattr(old, field_name))
                if old_key == key:
                    continue  # indexed under this value already
                ids = entries.get(old_key)
                if ids is not None:
                    ids.discard(old.workflow_id)
                    if not ids:
                        del entries[old_key]
            entries.setdefault(key, set()).add(state.workflow_id)
        self.states[state.workflow_id] = state


def _fresh_copy(state: S) -> S:
    """A copy that shares no mutable value with ``state``: cheaper than a deep copy."""
    return state_from(type(state), state.model_dump(), by_alias=False)


@dataclass
class _Lease:
    owner: str | None = None
    until: datetime | None = None


class _ScheduledMessages:
    """Messages waiting to be due, by message id, with the lease on each."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[ScheduledMessage, _Lease]] = {}

    def schedule(self, messages: Sequence[ScheduledMessage]) -> None:
        for scheduled in messages:
            self._waiting.setdefault(scheduled.message.message_id, (scheduled, _Lease()))

    def claim(
        self, now: datetime, owner: str, lease: timedelta, limit: int
    ) -> list[ClaimedMessage]:
        due = sorted(
            (
                (scheduled, held)
                for scheduled, held in self._waiting.values()
                if scheduled.due_at <= now and (held.until is None or held.until <= now)
            ),
            key=lambda pair: pair[0].due_at,
        )[:limit]
        claimed = []
        for scheduled, held in due:
            held.owner, held.until = owner, now + lease
            claimed.append(ClaimedMessage(scheduled, owner, held.until))
        return claimed

    def remove(self, claimed: ClaimedMessage) -> None:
        message_id = claimed.scheduled.message.message_id
        entry = self._waiting.get(message_id)
        if entry is not None and (entry[1].owner, entry[1].until) == (
            claimed.owner,
            claimed.leased_until,
        ):
            del self._waiting[message_id]


class InMemoryPersistence(WorkflowReads):
    """Keeps workflow states, and messages to deliver later, in memory; lost with the process.

    It enforces versions exactly as ``MongoPersistence`` does, keeps datetimes to the
    millisecond as MongoDB does, hands out copies rather than live objects, and yields to the
    event loop at each call as a database would, so races between handlers happen here as they
    would against a real store. Lookups on the fields that mappings name go through an index,
    as they do on MongoDB.
    """

    def __init__(self) -> None:
        self._logger = with_fields(logging.getLogger("busflow.memory"))
        self._tables: dict[type[WorkflowState], _Table] = {}
        self._state_types = StateTypesByName()
        self._scheduled = _ScheduledMessages()
        self._unique_running: dict[type[WorkflowState], tuple[str, ...]] = {}

    def with_workflow_options(
        self, state_type: type[WorkflowState], *, unique_running: Sequence[str] = ()
    ) -> Self:
        """Allow at most one running workflow per value of each ``unique_running`` field, as
        ``MongoPersistence.with_workflow_options`` does: a save that breaks it raises
        ``WorkflowUniquenessError``."""
        check_state_type(state_type, owner="InMemoryPersistence.with_workflow_options")
        for field_name in unique_running:
            if field_name not in state_type.model_fields:
                raise ConfigurationError(
                    f"{state_type.workflow_name}: unique_running names {field_name!r}, which is "
                    f"not a field of {state_type.__name__}"
                )
        self._unique_running[state_type] = tuple(unique_running)
        return self

    def unique_running_fields(self, state_type: type[WorkflowState]) -> tuple[str, ...]:
        """The fields set with ``with_workflow_options(unique_running=...)``."""
        return self._unique_running.get(state_type, ())

    def prepare(self, core_dependencies: CoreDependencies) -> None:
        self._logger = core_dependencies.logger_factory("busflow.memory")

    async def initialize_workflow(
        self,
        state_type: type[WorkflowState],
        mappings: Sequence[MessageWorkflowMapping[Any, Any]],
    ) -> None:
        table = self._table(state_type)
        check_mapping_fields(state_type, mappings, owner=state_type.workflow_name)
        for mapping in mappings:
            table.index(mapping.maps_to)

    async def get_workflow_state(
        self,
        state_type: type[S],
        mapping: MessageWorkflowMapping[Any, Any],
        message: Message,
        attributes: MessageAttributes,
        include_completed: bool = False,
    ) -> list[S]:
        table = self._table(state_type)
        value = resolve_lookup(mapping, message, attributes, where=state_type.workflow_name)
        await asyncio.sleep(0)
        if value is None:
            return []
        field_name = mapping.maps_to
        found = [
            _fresh_copy(state)
            for state in table.find(field_name, value)
            if include_completed or state.workflow_status is WorkflowStatus.RUNNING
        ]
        if self._logger.isEnabledFor(logging.DEBUG):
            self._logger.debug(
                "get_workflow_state %s %s=%r: %d found",
                state_type.workflow_name,
                field_name,
                value,
                len(found),
            )
        return found  # type: ignore[return-value]  # the table holds only state_type

    async def save_workflow_state(self, state: WorkflowState) -> None:
        table = self._table(type(state))
        stored_copy = _stored_copy(state, version=state.workflow_version + 1)
        await asyncio.sleep(0)
        name = type(state).workflow_name
        stored = table.states.get(state.workflow_id)
        expected = state.workflow_version
        if expected == 0 and stored is not None:
            raise WorkflowConcurrencyError(
                f"{name}: workflow {state.workflow_id} already exists; a new workflow needs a "
                "new id",
                collection=name,
                workflow_id=state.workflow_id,
                expected_version=0,
            )
        if expected > 0 and (stored is None or stored.workflow_version != expected):
            found = "missing" if stored is None else f"at version {stored.workflow_version}"
            raise WorkflowConcurrencyError(
                f"{name}: workflow {state.workflow_id} was saved at version {expected} but is "
                f"{found}; read it again and retry",
                collection=name,
                workflow_id=state.workflow_id,
                expected_version=expected,
            )
        if stored_copy.workflow_status is WorkflowStatus.RUNNING:
            for field_name in self._unique_running.get(type(state), ()):
                if table.running_holder(field_name, stored_copy) is not None:
                    raise WorkflowUniquenessError.on_save(
                        name,
                        state.workflow_id,
                        stored_keys(type(state))[field_name],
                        getattr(stored_copy, field_name),
                        expected,
                    )
        table.store(stored_copy)
        if self._logger.isEnabledFor(logging.DEBUG):
            self._logger.debug(
                "save_workflow_state %s %s: version %d", name, state.workflow_id, expected + 1
            )

    async def clear_outbox(
        self, state_type: type[WorkflowState], workflow_id: str, message_ids: Sequence[str]
    ) -> None:
        """Remove dispatched messages from a workflow's stored outbox; the version stays."""
        table = self._table(state_type)
        await asyncio.sleep(0)
        stored = table.states.get(workflow_id)
        if stored is None:
            return
        gone = set(message_ids)
        kept = [record for record in stored.workflow_outbox if record.message_id not in gone]
        if len(kept) < len(stored.workflow_outbox):
            table.store(stored.model_copy(update={"workflow_outbox": kept}))

    # TimeoutStore

    async def schedule_messages(self, messages: Sequence[ScheduledMessage]) -> None:
        await asyncio.sleep(0)
        self._scheduled.schedule(messages)

    async def claim_due_messages(
        self, now: datetime, *, owner: str, lease: timedelta, limit: int
    ) -> list[ClaimedMessage]:
        await asyncio.sleep(0)
        return self._scheduled.claim(now, owner, lease, limit)

    async def remove_claimed_message(self, claimed: ClaimedMessage) -> None:
        await asyncio.sleep(0)
        self._scheduled.remove(claimed)

    def _table(self, state_type: type[WorkflowState]) -> _Table:
        table = self._tables.get(state_type)
        if table is None:
            self._state_types.add(state_type, owner="InMemoryPersistence")
            table = self._tables[state_type] = _Table()
        return table
