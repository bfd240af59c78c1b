"""The persistence contract suite: one set of tests that every ``Persistence`` must pass.

Subclass ``PersistenceContract`` in a test module (give it a name that starts with
``Test``) and override the ``persistence`` fixture to return a fresh, initialized, empty
persistence::

    from busflow.testing import PersistenceContract

    class TestMyPersistence(PersistenceContract):
        @pytest.fixture
        async def persistence(self):
            store = MyPersistence(...)
            await store.initialize()
            yield store
            await store.dispose()

Needs pytest, pytest-asyncio and hypothesis (``pip install busflow[test]``).
"""

from busflow.testing._persistence_contract import (
    Address,
    ContractMessage,
    ContractOrder,
    ContractTypes,
    ContractValues,
    Level,
    PersistenceContract,
    Priority,
    Shape,
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
