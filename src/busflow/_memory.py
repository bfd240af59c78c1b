"""``InMemoryPersistence``: the reference persistence, kept in this process's memory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, TypeVar

from busflow._errors import ConfigurationError, WorkflowConcurrencyError
from busflow._messages import Message, MessageAttributes
from busflow._persistence import CoreDependencies, resolve_lookup
from busflow._values import compares_plainly, lookup_key, store_state
from busflow._workflow import (
    MessageWorkflowMapping,
    WorkflowState,
    WorkflowStatus,
    check_mapping_fields,
    check_state_type,
)

__all__ = ["InMemoryPersistence"]

S = TypeVar("S", bound=WorkflowState)


def _stored_copy(state: WorkflowState, *, version: int) -> WorkflowState:
    """A copy of ``state`` as MongoDB would give it back; see ``busflow._values``."""
    return store_state(state, version=version, where=type(state).workflow_name).read_back


class InMemoryPersistence:
    """Keeps workflow states in a dict; lost when the process ends.

    It enforces versions exactly as ``MongoPersistence`` does, keeps datetimes to the
    millisecond as MongoDB does, hands out copies rather than live objects, and yields to the
    event loop at each call as a database would, so races between handlers happen here as they
    would against a real store.
    """

    def __init__(self) -> None:
        self._logger = logging.getLogger("busflow.memory")
        self._states: dict[str, dict[str, WorkflowState]] = {}
        self._state_types: dict[str, type[WorkflowState]] = {}

    def prepare(self, core_dependencies: CoreDependencies) -> None:
        self._logger = core_dependencies.logger_factory("busflow.memory")

    async def initialize_workflow(
        self,
        state_type: type[WorkflowState],
        mappings: Sequence[MessageWorkflowMapping[Any, Any]],
    ) -> None:
        self._table(state_type)
        check_mapping_fields(state_type, mappings, owner=state_type.workflow_name)

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
        key, plain = lookup_key(value), compares_plainly(state_type, mapping.maps_to, value)
        found = [
            state.model_copy(deep=True)
            for state in table.values()
            if (
                getattr(state, mapping.maps_to) == value  # what lookup_key tells, but faster
                if plain
                else lookup_key(getattr(state, mapping.maps_to)) == key
            )
            and (include_completed or state.workflow_status is WorkflowStatus.RUNNING)
        ]
        self._logger.debug(
            "get_workflow_state %s %s=%r: %d found",
            state_type.workflow_name,
            mapping.maps_to,
            value,
            len(found),
        )
        return found  # type: ignore[return-value]  # the table holds only state_type

    async def save_workflow_state(self, state: WorkflowState) -> None:
        table = self._table(type(state))
        stored_copy = _stored_copy(state, version=state.workflow_version + 1)
        await asyncio.sleep(0)
        name = type(state).workflow_name
        stored = table.get(state.workflow_id)
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
        table[state.workflow_id] = stored_copy
        self._logger.debug(
            "save_workflow_state %s %s: version %d", name, state.workflow_id, expected + 1
        )

    def _table(self, state_type: type[WorkflowState]) -> dict[str, WorkflowState]:
        check_state_type(state_type, owner="InMemoryPersistence")
        name = state_type.workflow_name
        known = self._state_types.setdefault(name, state_type)
        if known is not state_type:
            raise ConfigurationError(
                f"{state_type.__name__} and {known.__name__} both use workflow_name "
                f"{name!r}; give each state type its own name"
            )
        return self._states.setdefault(name, {})
