"""The order saga example (``examples/order_saga.py``, also ``busflow demo``) runs as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from busflow.mongodb import embedded_server_available
from tests.conftest import WireServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = [sys.executable, str(ROOT / "examples" / "order_saga.py")]
BUSFLOW_DEMO = [sys.executable, "-m", "busflow.cli", "demo"]
ITEMS = ["keyboard", "mouse", "monitor", "cable"]


def run(
    command: list[str], *args: str, environment: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with MONGODB_URI and AMQP_URL unset unless ``environment`` sets them."""
    env = {
        key: value for key, value in os.environ.items() if key not in ("MONGODB_URI", "AMQP_URL")
    }
    env.update(environment or {})
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=90, env=env, check=False
    )


def mongo_client(uri: str) -> MongoClient[dict[str, Any]]:
    """A client for checking what the subprocess stored."""
    return MongoClient(uri, serverSelectionTimeoutMS=5000)


def parse_documents(text: str) -> list[dict[str, Any]]:
    """The JSON documents printed one after another in ``text``."""
    decoder = json.JSONDecoder()
    documents: list[dict[str, Any]] = []
    position = 0
    text = text.strip()
    while position < len(text):
        document, position = decoder.raw_decode(text, position)
        documents.append(document)
        while position < len(text) and text[position].isspace():
            position += 1
    return documents


@dataclass
class DemoOutput:
    first_line: str
    what_happened: list[str]
    documents: list[dict[str, Any]]
    shell_commands: list[str]

    @classmethod
    def of(cls, result: subprocess.CompletedProcess[str]) -> DemoOutput:
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        lines = result.stdout.splitlines()
        happened_at = lines.index("What happened:")
        documents_at = next(n for n, line in enumerate(lines) if line.startswith("The stored"))
        commands_at = next(n for n, line in enumerate(lines) if line.startswith("The mongo shell"))
        return cls(
            first_line=lines[0],
            what_happened=lines[happened_at + 1 : documents_at - 1],
            documents=parse_documents("\n".join(lines[documents_at + 1 : commands_at])),
            shell_commands=[line.strip() for line in lines[commands_at + 1 :] if line.strip()],
        )

    def by_status(self, status: str) -> list[dict[str, Any]]:
        return [document for document in self.documents if document["_status"] == status]

    @property
    def collection(self) -> str:
        """The collection that the shell commands name."""
        names = {
            match.group(1)
            for command in self.shell_commands
            if (match := re.match(r"db\.(\w+)\.find\(\{order_id", command))
        }
        assert len(names) == 1, self.shell_commands
        return names.pop()


def assert_one_order_completed_and_one_running(output: DemoOutput) -> None:
    [completed] = output.by_status("complete")
    [running] = output.by_status("running")
    assert sorted(completed["items"]) == sorted(ITEMS), "an item was lost or added twice"
    assert completed["shipped"] is True
    assert completed["amount_paid"] == {"$numberDecimal": "249.90"}
    assert "$date" in completed["_completed_at"]
    assert running["items"] == ["notebook"]
    assert running["amount_paid"] is None
    assert "_completed_at" not in running
    assert any(f"{completed['order_id']} is complete" in line for line in output.what_happened)
    assert any(f"{running['order_id']} is running" in line for line in output.what_happened)


@pytest.fixture
def database(wire_server: WireServer) -> Iterator[str]:
    """A fresh database name on the wire server; dropped afterwards."""
    name = f"busflow_demo_test_{uuid.uuid4().hex[:8]}"
    yield name
    with mongo_client(wire_server.uri) as client:
        client.drop_database(name)


def test_without_a_server_the_example_runs_on_an_embedded_one() -> None:
    output = DemoOutput.of(run(EXAMPLE))

    expected = "embedded mongoeco wire server" if embedded_server_available() else "mongomock"
    assert output.first_line.startswith("order_saga: running on ")
    assert expected in output.first_line
    assert_one_order_completed_and_one_running(output)
    assert output.shell_commands[0] == "use busflow_demo"
    assert output.collection == "demo_order"
    assert 'db.demo_order.find({_status: "running"}).sort({_updated_at: 1})' in (
        output.shell_commands
    )


def test_with_a_uri_it_stores_the_orders_there_and_can_run_again(
    wire_server: WireServer, database: str
) -> None:
    first = DemoOutput.of(run(EXAMPLE, "--uri", wire_server.uri, "--database", database))
    second = DemoOutput.of(run(BUSFLOW_DEMO, "--uri", wire_server.uri, "--database", database))

    for output, program in ((first, "order_saga"), (second, "busflow demo")):
        assert output.first_line.startswith(f"{program}: running on MongoDB at ")
        assert output.first_line.endswith("(from --uri)")
        assert_one_order_completed_and_one_running(output)
        assert f"use {database}" in output.shell_commands
    first_orders = {document["order_id"] for document in first.documents}
    second_orders = {document["order_id"] for document in second.documents}
    assert not first_orders & second_orders, "each run uses order ids of its own"

    with mongo_client(wire_server.uri) as client:
        stored = list(client[database][first.collection].find())
    assert {document["order_id"] for document in stored} == first_orders | second_orders
    assert sorted(document["_status"] for document in stored) == [
        "complete",
        "complete",
        "running",
        "running",
    ]


def test_busflow_demo_uses_mongodb_uri_from_the_environment(
    wire_server: WireServer, database: str
) -> None:
    output = DemoOutput.of(
        run(BUSFLOW_DEMO, "--database", database, environment={"MONGODB_URI": wire_server.uri})
    )

    assert output.first_line.startswith("busflow demo: running on MongoDB at ")
    assert output.first_line.endswith("(from MONGODB_URI)")
    assert_one_order_completed_and_one_running(output)


BLOCK_MONGOECO = "import sys; sys.modules['mongoeco'] = None; "
RUN_DEMO = "from busflow.cli import demo_main; raise SystemExit(demo_main([]))"


def test_without_mongoeco_it_falls_back_to_mongomock() -> None:
    output = DemoOutput.of(run([sys.executable, "-c", BLOCK_MONGOECO + RUN_DEMO]))

    assert "mongomock-motor" in output.first_line
    assert "mongoeco is not installed" in output.first_line
    assert_one_order_completed_and_one_running(output)


def test_with_no_backend_at_all_it_says_what_to_install() -> None:
    block_both = BLOCK_MONGOECO + "sys.modules['mongomock_motor'] = None; "
    result = run([sys.executable, "-c", block_both + RUN_DEMO])

    assert result.returncode == 1
    assert result.stdout == ""
    [error] = result.stderr.splitlines()
    assert error.startswith("order_saga: no --uri or MONGODB_URI given")
    assert 'pip install "mongoeco[wire]"' in error
    assert "mongomock-motor" in error


def test_an_unreachable_server_is_one_line_without_the_password() -> None:
    result = run(EXAMPLE, "--uri", "mongodb://user:s3cret@127.0.0.1:1/", "--timeout", "1")

    assert result.returncode == 1
    assert "s3cret" not in result.stdout + result.stderr
    assert result.stdout.splitlines()[0].startswith(
        "order_saga: running on MongoDB at mongodb://user:***@127.0.0.1:1/"
    )
    [error] = result.stderr.splitlines()
    assert error.startswith("order_saga: cannot reach MongoDB at 127.0.0.1:1 within 1 s")
