import pytest

from busflow import InMemoryPersistence
from busflow.testing import PersistenceContract


class TestInMemoryPersistence(PersistenceContract):
    @pytest.fixture
    def persistence(self) -> InMemoryPersistence:
        return InMemoryPersistence()
