"""Three small workflow types for the startup tests: each has one lookup field."""

from __future__ import annotations

from typing import Any

from busflow import (
    Message,
    MessageAttributes,
    MessageWorkflowMapping,
    Workflow,
    WorkflowMapper,
    WorkflowState,
)


class Opened(Message):
    message_name = "startup.Opened"
    key: str


class Touched(Message):
    message_name = "startup.Touched"
    key: str


class Ticket(WorkflowState):
    workflow_name = "startup/ticket"

    ticket_no: str = ""


class Parcel(WorkflowState):
    workflow_name = "startup/parcel"

    parcel_no: str = ""


class Refund(WorkflowState):
    workflow_name = "startup/refund"

    refund_no: str = ""


def _key(message: Any, _attributes: MessageAttributes) -> str:
    key: str = message.key
    return key


class KeyedWorkflow(Workflow[Any]):
    """Started by ``Opened``; ``Touched`` finds it by ``key_field``, which has an index."""

    def __init__(self, state_type: type[WorkflowState], key_field: str) -> None:
        self.state_type = state_type
        self.key_field = key_field

    def configure_workflow(self, mapper: WorkflowMapper[Any]) -> None:
        by_key = MessageWorkflowMapping[Any, Any](lookup=_key, maps_to=self.key_field)
        mapper.with_state(self.state_type).started_by(Opened, self.opened).when(
            Touched, self.touched, by_key
        )

    async def opened(self, message: Opened, state: Any, _a: MessageAttributes) -> dict[str, Any]:
        return {self.key_field: message.key}

    async def touched(self, message: Touched, state: Any, _a: MessageAttributes) -> None:
        return None


def startup_workflows(count: int) -> list[KeyedWorkflow]:
    """The first ``count`` (1 to 3) of the three workflow types."""
    every = [
        KeyedWorkflow(Ticket, "ticket_no"),
        KeyedWorkflow(Parcel, "parcel_no"),
        KeyedWorkflow(Refund, "refund_no"),
    ]
    return every[:count]
