from decimal import Decimal

import pytest

from busflow import (
    InMemoryPersistence,
    Persistence,
    WorkflowState,
    WorkflowStatus,
    WorkflowUniquenessError,
)
from busflow.testing import PersistenceContract
from tests.counters import CounterState
from tests.scenarios import find


class TestInMemoryPersistence(PersistenceContract):
    @pytest.fixture
    def persistence(self) -> InMemoryPersistence:
        return InMemoryPersistence()


class Tally(WorkflowState):
    workflow_name = "memory/tally"

    count: int = 0
    flag: bool = False


async def check_lookups_compare_as_mongodb_does(persistence: Persistence) -> None:
    """Numbers equal across int, float and Decimal; a bool equals only a bool."""
    await persistence.save_workflow_state(Tally(workflow_id="one", count=1))
    await persistence.save_workflow_state(Tally(workflow_id="true", flag=True))

    async def ids(field: str, value: object) -> list[str]:
        return [state.workflow_id for state in await find(persistence, Tally, field, value)]

    assert await ids("count", 1.0) == ["one"]
    assert await ids("count", Decimal("1.0")) == ["one"]
    assert await ids("count", True) == []
    assert await ids("flag", 1) == []
    assert await ids("flag", True) == ["true"]


async def test_lookups_compare_as_mongodb_does() -> None:
    await check_lookups_compare_as_mongodb_does(InMemoryPersistence())


async def test_unique_running_allows_one_running_workflow_per_value() -> None:
    persistence = InMemoryPersistence().with_workflow_options(CounterState, unique_running=["key"])
    await persistence.save_workflow_state(CounterState(workflow_id="first", key="k"))

    with pytest.raises(WorkflowUniquenessError) as refused:
        await persistence.save_workflow_state(CounterState(workflow_id="second", key="k"))
    assert (refused.value.field, refused.value.value) == ("key", "k")
    assert await persistence.find_workflow(CounterState, "second") is None

    [first] = await persistence.find_workflows(CounterState, "key", "k")
    await persistence.save_workflow_state(
        first.model_copy(update={"workflow_status": WorkflowStatus.COMPLETE})
    )
    await persistence.save_workflow_state(CounterState(workflow_id="second", key="k"))
    assert len(await persistence.find_workflows(CounterState, "key", "k")) == 2
