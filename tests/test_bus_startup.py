"""``Bus.initialize`` prepares every workflow type at once, and fails clearly when one fails."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from busflow import (
    Bus,
    ConfigurationError,
    InMemoryPersistence,
    MessageWorkflowMapping,
    PersistenceError,
    WorkflowState,
)
from tests.startup_workflows import Parcel, Refund, Ticket, startup_workflows


class GatedPersistence(InMemoryPersistence):
    """Each ``initialize_workflow`` waits until ``expected`` calls have started, so calls made
    one after another never finish; ``failures`` makes the call for a state type raise."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.expected = expected
        self.failures: dict[type[WorkflowState], Exception] = {}
        self.started: list[type[WorkflowState]] = []
        self.finished: list[type[WorkflowState]] = []
        self._all_started = asyncio.Event()

    async def initialize_workflow(
        self,
        state_type: type[WorkflowState],
        mappings: Sequence[MessageWorkflowMapping[Any, Any]],
    ) -> None:
        self.started.append(state_type)
        if len(self.started) == self.expected:
            self._all_started.set()
        async with asyncio.timeout(2):
            await self._all_started.wait()
        await super().initialize_workflow(state_type, mappings)
        failure = self.failures.get(state_type)
        if failure is not None:
            raise failure
        self.finished.append(state_type)


def bus_on(persistence: InMemoryPersistence) -> Bus:
    configuration = Bus.configure().with_persistence(persistence)
    for workflow in startup_workflows(3):
        configuration = configuration.with_workflow(workflow)
    return configuration.build()


async def test_the_bus_initializes_every_workflow_type_at_once() -> None:
    persistence = GatedPersistence(expected=3)
    bus = bus_on(persistence)

    await bus.initialize()

    assert set(persistence.finished) == {Ticket, Parcel, Refund}
    await bus.dispose()


async def test_one_type_failing_raises_its_error_after_the_others_finished() -> None:
    persistence = GatedPersistence(expected=3)
    persistence.failures[Parcel] = PersistenceError("startup_parcel: setting up failed")
    persistence.failures[Refund] = ConfigurationError("startup_refund: an index differs")
    bus = bus_on(persistence)

    with pytest.raises(PersistenceError) as raised:
        await bus.initialize()

    assert str(raised.value) == "startup_parcel: setting up failed"
    assert raised.value.__notes__ == [
        "another workflow failed to initialize too: "
        "ConfigurationError('startup_refund: an index differs')"
    ]
    assert persistence.finished == [Ticket]


async def test_a_failed_initialize_may_be_called_again() -> None:
    persistence = GatedPersistence(expected=3)
    persistence.failures[Refund] = ConfigurationError("startup_refund: an index differs")
    bus = bus_on(persistence)
    with pytest.raises(ConfigurationError):
        await bus.initialize()

    persistence.failures.clear()
    persistence.finished.clear()
    await bus.initialize()

    assert set(persistence.finished) == {Ticket, Parcel, Refund}
    await bus.dispose()
