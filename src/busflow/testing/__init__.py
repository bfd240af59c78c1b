"""Contract suites: one set of tests that every persistence, and every transport, must pass.

``PersistenceContract``: subclass it in a test module (give it a name that starts with
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

``BusContract``: the same for a transport; override the ``transport`` fixture to yield a
fresh transport on an empty queue of its own. It covers per-workflow ordering, the outbox,
retries, dead letters, sticky replies and dispose.

Needs pytest, pytest-asyncio and hypothesis (``pip install busflow[test]``).
"""

from busflow.testing._bus_contract import BusContract
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
    "BusContract",
    "ContractMessage",
    "ContractOrder",
    "ContractTypes",
    "ContractValues",
    "Level",
    "PersistenceContract",
    "Priority",
    "Shape",
]
