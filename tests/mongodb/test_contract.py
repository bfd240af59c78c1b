"""The persistence contract suite, on MongoPersistence, on every MongoDB backend."""

from collections.abc import AsyncIterator

import pytest

from busflow.mongodb import MongoPersistence
from busflow.testing import PersistenceContract
from tests.conftest import MongoBackend


class TestMongoPersistence(PersistenceContract):
    @pytest.fixture
    async def persistence(self, mongo_backend: MongoBackend) -> AsyncIterator[MongoPersistence]:
        persistence = MongoPersistence(client=mongo_backend.client, database=mongo_backend.database)
        await persistence.initialize()
        yield persistence
        await persistence.dispose()
