"""Backends for the tests, and a summary line that says which of them ran."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring

from busflow.mongodb import embedded_server_available, redact_uri

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"

_ran: Counter[str] = Counter()
_skipped: dict[str, str] = {}
_backend_of: dict[str, str] = {}
"""Test id to the backend it runs against, set while it is set up."""


@dataclass(frozen=True)
class WireServer:
    uri: str
    label: str
    real_mongodb: bool


@pytest.fixture(scope="session")
def wire_server() -> Iterator[WireServer]:
    """MONGODB_URI when set (a real MongoDB), else a mongoeco wire server this run starts."""
    uri = os.environ.get("MONGODB_URI")
    if uri:
        yield WireServer(uri, f"MongoDB at {redact_uri(uri)} (MONGODB_URI)", real_mongodb=True)
        return
    if not embedded_server_available():
        reason = (
            "wire tier skipped: MONGODB_URI is unset and mongoeco[wire] is not installed "
            f"(it needs CPython 3.13+; this is {sys.version.split()[0]})"
        )
        if os.environ.get("BUSFLOW_REQUIRE_WIRE"):
            pytest.fail(f"BUSFLOW_REQUIRE_WIRE is set but the {reason}")
        _skipped["wire"] = reason
        pytest.skip(reason)
    process = subprocess.Popen(
        [sys.executable, "-m", "busflow.mongodb._embedded"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    started_uri = process.stdout.readline().strip()
    if not started_uri.startswith("mongodb://"):
        process.kill()
        pytest.fail(f"the mongoeco wire server did not start (printed {started_uri!r})")
    from importlib.metadata import version

    try:
        yield WireServer(
            started_uri, f"mongoeco {version('mongoeco')} wire server at {started_uri}", False
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


@dataclass(frozen=True)
class RabbitMQServer:
    url: str
    label: str


def amqp_url() -> str:
    """``AMQP_URL`` when set, else the local RabbitMQ."""
    return os.environ.get("AMQP_URL") or DEFAULT_AMQP_URL


@pytest.fixture(scope="session")
def rabbitmq() -> RabbitMQServer:
    """The RabbitMQ tier's broker: ``AMQP_URL``, else the local server; skipped if it cannot
    be reached, unless ``BUSFLOW_REQUIRE_RABBITMQ`` is set."""
    url = amqp_url()
    try:
        version = _rabbitmq_version(url)
    except Exception as error:
        reason = f"RabbitMQ tier skipped: no RabbitMQ at {redact_uri(url)} ({error})"
        if os.environ.get("BUSFLOW_REQUIRE_RABBITMQ"):
            pytest.fail(f"BUSFLOW_REQUIRE_RABBITMQ is set but the {reason}")
        _skipped["rabbitmq"] = reason
        pytest.skip(reason)
    scheme, _, rest = url.partition("://")
    shown = f"{scheme}://{rest.rpartition('@')[2]}"
    return RabbitMQServer(url, f"transport: RabbitMQ {version} at {shown}")


def _rabbitmq_version(url: str) -> str:
    """The broker's version, read over AMQP; raises if it cannot be reached."""
    import asyncio

    try:
        import aio_pika
    except ImportError:
        raise RuntimeError('aio-pika is not installed: pip install "busflow[rabbitmq]"') from None

    async def probe() -> str:
        connection = await aio_pika.connect(url, timeout=5)
        try:
            assert connection.transport is not None
            version = connection.transport.connection.server_properties.get("version", b"?")
            return version.decode() if isinstance(version, bytes) else str(version)
        finally:
            await connection.close()

    return asyncio.run(probe())


class Commands(monitoring.CommandListener):
    """Counts the commands a client sends, by name (PyMongo's command monitoring)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@dataclass
class MongoBackend:
    name: str
    client: Any
    database: str
    commands: Commands | None
    """Commands the client sent; None where the backend has no command monitoring."""
    wire: WireServer | None


@pytest.fixture(params=["mongomock", "wire"])
async def mongo_backend(request: pytest.FixtureRequest) -> AsyncIterator[MongoBackend]:
    """A fresh database on one MongoDB backend; dropped afterwards."""
    database = f"busflow_test_{uuid.uuid4().hex[:12]}"
    if request.param == "mongomock":
        from mongomock_motor import AsyncMongoMockClient

        _backend_of[request.node.nodeid] = "mongomock (mongomock-motor, in process)"
        yield MongoBackend("mongomock", AsyncMongoMockClient(), database, None, None)
        return
    server: WireServer = request.getfixturevalue("wire_server")
    _backend_of[request.node.nodeid] = server.label
    commands = Commands()
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        server.uri, event_listeners=[commands], serverSelectionTimeoutMS=5000
    )
    try:
        yield MongoBackend("wire", client, database, commands, server)
    finally:
        await client.drop_database(database)
        await client.close()


def label_backend(request: pytest.FixtureRequest, label: str) -> None:
    """Count the requesting test under ``label`` in the summary's backends section."""
    _backend_of[request.node.nodeid] = label


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``broker_restart`` stop the broker for a while: they run on request."""
    if os.environ.get("BUSFLOW_TEST_BROKER_RESTART"):
        return
    skip = pytest.mark.skip(
        reason="restarts the local RabbitMQ; set BUSFLOW_TEST_BROKER_RESTART=1 to run it"
    )
    for item in items:
        if item.get_closest_marker("broker_restart"):
            item.add_marker(skip)


def pytest_runtest_setup(item: pytest.Item) -> None:
    names = getattr(item, "fixturenames", ())
    if "mongo_backend" not in names:  # that fixture names its backend itself
        _backend_of[item.nodeid] = (
            "wire server, from a subprocess (CLI and demo)"
            if "wire_server" in names
            else "in-memory"
        )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count a test for its backend once its body ran: skipped tests are not counted."""
    backend = _backend_of.get(report.nodeid)
    if backend is not None and report.when == "call" and not report.skipped:
        _ran[backend] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.section("busflow backends")
    for label, count in sorted(_ran.items()):
        terminalreporter.write_line(f"ran: {label}: {count} test(s)")
    for reason in _skipped.values():
        terminalreporter.write_line(f"SKIPPED: {reason}")
    if not os.environ.get("MONGODB_URI"):
        terminalreporter.write_line(
            "not run: a real MongoDB (set MONGODB_URI, e.g. with docker/compose.yml)"
        )
