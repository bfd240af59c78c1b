"""The bus contract on ``MemoryTransport``, and what only the memory transport promises."""

from __future__ import annotations

import pytest

from busflow import MemoryTransport, Transport
from busflow.testing import BusContract
from tests.conftest import label_backend


class TestMemoryTransport(BusContract):
    @pytest.fixture
    def transport(self, request: pytest.FixtureRequest) -> Transport:
        label_backend(request, "transport: MemoryTransport")
        return MemoryTransport()
