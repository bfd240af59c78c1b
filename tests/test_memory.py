from decimal import Decimal

import pytest

from busflow import InMemoryPersistence, Persistence, WorkflowState
from busflow.testing import PersistenceContract
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
