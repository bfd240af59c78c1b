"""The state cache: the state each workflow was saved with last, for its next message.

Messages for one workflow instance run one at a time within a bus, so the state this bus saved
last is, unless another process moved the workflow on since, the state a read would return.
The runner hands it to the next handler instead of reading it, and the save that follows is
still guarded by the version: if another process saved in between, the save fails, the
runner reads the workflow and runs the handler again.

Only lookups that name exactly one running workflow are answered here: by ``workflow_id``,
and by a field the persistence keeps unique among running workflows (``unique_running``).
Any other lookup may match a workflow that another process started, which this bus never
saw, so it goes to the persistence.

A state is taken out when it is handed to a handler, and put back only by a save that
succeeded: a handler that fails, or mutates the state it was given, leaves nothing behind.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable
from typing import Any

from busflow._messages import Message, MessageAttributes
from busflow._persistence import resolve_lookup
from busflow._values import lookup_key
from busflow._workflow import MessageWorkflowMapping, WorkflowState, WorkflowStatus

__all__ = ["StateCache"]

_Instance = tuple[type[WorkflowState], str]
_FieldValue = tuple[type[WorkflowState], str, Hashable]


class StateCache:
    """A bounded, least-recently-used map from workflow instances to their last saved state."""

    def __init__(
        self, size: int, unique_fields: Callable[[type[WorkflowState]], tuple[str, ...]]
    ) -> None:
        self._size = size
        self._unique_fields = unique_fields
        self._states: collections.OrderedDict[_Instance, WorkflowState] = collections.OrderedDict()
        self._by_value: dict[_FieldValue, str] = {}

    def __len__(self) -> int:
        return len(self._states)

    def answers(self, state_type: type[WorkflowState], field: str) -> bool:
        """Whether a lookup by ``field`` names at most one running workflow."""
        return field == "workflow_id" or field in self._unique_fields(state_type)

    def look_up(
        self,
        state_type: type[WorkflowState],
        mapping: MessageWorkflowMapping[Any, Any],
        message: Message,
        attributes: MessageAttributes,
    ) -> WorkflowState | None:
        """Take the one running state a lookup names, if it is here; ``None`` otherwise (then
        ask the persistence, which also reports a lookup that fails)."""
        if not self._states or not self.answers(state_type, mapping.maps_to):
            return None  # empty (or off), as with a persistence whose saves return nothing
        try:
            value = resolve_lookup(mapping, message, attributes, where=state_type.workflow_name)
        except Exception:
            return None
        if mapping.maps_to == "workflow_id":
            workflow_id = value if isinstance(value, str) else None
        else:
            workflow_id = self._by_value.get((state_type, mapping.maps_to, lookup_key(value)))
        return None if workflow_id is None else self.take(state_type, workflow_id)

    def take(self, state_type: type[WorkflowState], workflow_id: str) -> WorkflowState | None:
        """Remove and return the state of one workflow, if it is here."""
        state = self._states.pop((state_type, workflow_id), None)
        if state is not None:
            self._unindex(state)
        return state

    def put(self, state: WorkflowState) -> None:
        """Keep ``state``, just saved and handed to no one, if it is still running."""
        if self._size == 0:
            return
        instance = (type(state), state.workflow_id)
        old = self._states.pop(instance, None)
        if old is not None:
            self._unindex(old)
        if state.workflow_status is not WorkflowStatus.RUNNING:
            return
        self._states[instance] = state
        for field in self._unique_fields(type(state)):
            self._by_value[(type(state), field, lookup_key(getattr(state, field)))] = (
                state.workflow_id
            )
        if len(self._states) > self._size:
            _, evicted = self._states.popitem(last=False)
            self._unindex(evicted)

    def _unindex(self, state: WorkflowState) -> None:
        state_type = type(state)
        for field in self._unique_fields(state_type):
            key = (state_type, field, lookup_key(getattr(state, field)))
            if self._by_value.get(key) == state.workflow_id:
                del self._by_value[key]
