"""A counter workflow for the state cache and coalescing tests: found by a unique ``key``, by
a ``tag`` that several workflows may share, and reporting what it holds."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field

from busflow import (
    BusConfiguration,
    BusflowError,
    Message,
    MessageAttributes,
    MessageWorkflowMapping,
    Workflow,
    WorkflowMapper,
    WorkflowState,
)


class CounterState(WorkflowState):
    workflow_name = "test/counter"

    key: str = ""
    tag: str = ""
    count: int = 0
    seen: list[str] = Field(default_factory=list)
    """The ids of the bumps applied, in the order they ran."""


class Start(Message):
    key: str
    tag: str = ""


class Bump(Message):
    key: str
    fail: bool = False
    pause: float = 0.0


class BumpTag(Message):
    tag: str


class Report(Message):
    key: str


class Reported(Message):
    key: str
    count: int


class Finish(Message):
    key: str


class BumpRefusedError(BusflowError):
    """A bump the handler refuses; it can only recur, so it is dead-lettered at once."""


BY_KEY: MessageWorkflowMapping[Any, CounterState] = MessageWorkflowMapping(
    lookup=lambda message, _attributes: message.key, maps_to="key"
)
BY_TAG: MessageWorkflowMapping[BumpTag, CounterState] = MessageWorkflowMapping(
    lookup=lambda message, _attributes: message.tag, maps_to="tag"
)


class CounterWorkflow(Workflow[CounterState]):
    def configure_workflow(self, mapper: WorkflowMapper[CounterState]) -> None:
        (
            mapper.with_state(CounterState)
            .started_by(Start, self.start)
            .when(Bump, self.bump, BY_KEY)
            .when(BumpTag, self.bump_tag, BY_TAG)
            .when(Report, self.report, BY_KEY)
            .when(Finish, self.finish, BY_KEY)
        )

    async def start(
        self, message: Start, state: CounterState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        return {"key": message.key, "tag": message.tag}

    async def bump(
        self, message: Bump, state: CounterState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        if message.pause:
            await asyncio.sleep(message.pause)
        if message.fail:
            raise BumpRefusedError(f"bump {attributes.message_id} refused")
        return {"count": state.count + 1, "seen": [*state.seen, str(attributes.message_id)]}

    async def bump_tag(
        self, message: BumpTag, state: CounterState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        return {"count": state.count + 100}

    async def report(
        self, message: Report, state: CounterState, attributes: MessageAttributes
    ) -> None:
        """Saves nothing: it only sends what it read."""
        await self.bus.publish(Reported(key=state.key, count=state.count))

    async def finish(
        self, message: Finish, state: CounterState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        return self.complete_workflow()


def reporting_to(
    configuration: BusConfiguration, reports: list[Reported] | None
) -> BusConfiguration:
    """``configuration`` with a handler that keeps every ``Reported`` in ``reports``, if given."""
    if reports is None:
        return configuration

    async def collect(message: Reported, _attributes: MessageAttributes) -> None:
        reports.append(message)

    return configuration.with_handler(Reported, collect)
