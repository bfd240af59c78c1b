"""The ``busflow`` console script, run as an operator would, against the wire-tier server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import WireServer
from tests.test_order_saga import DemoOutput, mongo_client, parse_documents, run

BUSFLOW = [sys.executable, "-m", "busflow.cli"]
UNREACHABLE_WITH_PASSWORD = "mongodb://user:s3cret@127.0.0.1:1/"


@dataclass
class DemoDatabase:
    uri: str
    name: str
    completed: dict[str, Any]
    running: dict[str, Any]

    def busflow(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``busflow COMMAND --uri URI --database NAME ARGS...``; args[0] is the command."""
        command, *rest = args
        return run(BUSFLOW, command, "--uri", self.uri, "--database", self.name, *rest)


def populate(uri: str) -> Iterator[DemoDatabase]:
    """Run the demo into a fresh database; drop it afterwards."""
    name = f"busflow_cli_test_{uuid.uuid4().hex[:8]}"
    output = DemoOutput.of(run(BUSFLOW, "demo", "--uri", uri, "--database", name))
    [completed] = output.by_status("complete")
    [running] = output.by_status("running")
    yield DemoDatabase(uri, name, completed, running)
    with mongo_client(uri) as client:
        client.drop_database(name)


@pytest.fixture(scope="module")
def demo_database(wire_server: WireServer) -> Iterator[DemoDatabase]:
    """One demo run, shared by the tests that only read it."""
    yield from populate(wire_server.uri)


@pytest.fixture
def own_demo_database(wire_server: WireServer) -> Iterator[DemoDatabase]:
    """A demo run of its own, for a test that changes it."""
    yield from populate(wire_server.uri)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    return line


# inspect


def test_inspect_lists_counts_oldest_running_workflow_and_healthy_indexes(
    demo_database: DemoDatabase,
) -> None:
    result = demo_database.busflow("inspect")

    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert lines[0].startswith(f"database {demo_database.name} at ")
    assert "1 workflow collection(s)" in lines[0]
    assert "demo_order  (workflow demo/order, state busflow.cli._demo.OrderState)" in lines
    assert "workflows:      1 running, 1 complete (2 in all)" in lines
    [oldest] = [line for line in lines if line.startswith("oldest running:")]
    running = demo_database.running
    assert oldest.startswith(f"oldest running: {running['_id']} order_id='{running['order_id']}'")
    assert oldest.endswith(" s ago")
    assert "indexes:        ok: busflow_lookup_order_id, busflow_unique_running_order_id" in lines
    assert "outgoing:       none waiting longer than 1 min" in lines
    assert "timeouts:       none pending" in lines
    assert lines[-1] == "no problems found"


def test_inspect_prints_one_json_object_with_json(demo_database: DemoDatabase) -> None:
    result = demo_database.busflow("inspect", "--json")

    assert result.returncode == 0, result.stderr
    inspected = json.loads(result.stdout)
    assert inspected["database"] == demo_database.name
    assert (inspected["problems"], inspected["timeouts_from_outside"]) == (0, 0)
    [collection] = inspected["collections"]
    running = demo_database.running
    assert collection["collection"] == "demo_order"
    assert collection["workflow_name"] == "demo/order"
    assert collection["workflows"] == {"running": 1, "complete": 1}
    assert collection["oldest_running"]["workflow_id"] == running["_id"]
    assert collection["oldest_running"]["lookups"] == {"order_id": running["order_id"]}
    assert collection["oldest_running"]["age_seconds"] >= 0
    assert collection["indexes_ok"] == [
        "busflow_lookup_order_id",
        "busflow_unique_running_order_id",
    ]
    assert collection["timeouts"] == {"pending": 0, "next_due": None}
    assert (collection["outgoing_waiting"], collection["problems"]) == (0, [])


def test_inspect_and_show_list_pending_timeouts(own_demo_database: DemoDatabase) -> None:
    due = (datetime.now(UTC) + timedelta(hours=2, minutes=30)).replace(microsecond=0)
    with mongo_client(own_demo_database.uri) as client:
        client[own_demo_database.name]["busflow_timeouts"].insert_many(
            [
                {
                    "_id": f"t-{n}",
                    "due_at": due + timedelta(minutes=n),
                    "name": "demo.PaymentOverdue",
                    "body": "{}",
                    "workflow_name": "demo/order",
                    "workflow_id": own_demo_database.running["_id"],
                    "leased_until": datetime(1970, 1, 1, tzinfo=UTC),
                }
                for n in range(2)
            ]
        )

        inspected = own_demo_database.busflow("inspect")
        shown = own_demo_database.busflow("show", "busflow_timeouts")

    lines = [line.strip() for line in inspected.stdout.splitlines()]
    [timeouts] = [line for line in lines if line.startswith("timeouts:")]
    assert timeouts.startswith("timeouts:       2 pending, the next due ")
    assert timeouts.endswith("(in 2 h 29 min)") or timeouts.endswith("(in 2 h 30 min)")
    assert shown.returncode == 0, shown.stderr
    assert '"_id": "t-0"' in shown.stdout
    assert '"name": "demo.PaymentOverdue"' in shown.stdout


def test_inspect_reports_outgoing_messages_left_behind_by_a_dead_worker(
    own_demo_database: DemoDatabase,
) -> None:
    ten_minutes_ago = datetime.now(UTC) - timedelta(minutes=10)
    left_behind = {
        "message_id": "m-1",
        "name": "demo.ShipOrder",
        "body": "{}",
        "origin": "in-1",
        "saved_at": ten_minutes_ago,
    }
    with mongo_client(own_demo_database.uri) as client:
        collection = client[own_demo_database.name]["demo_order"]
        collection.update_one(
            {"_id": own_demo_database.running["_id"]}, {"$set": {"_outbox": [left_behind]}}
        )

        result = own_demo_database.busflow("inspect")
        patient = own_demo_database.busflow("inspect", "--outbox-age", "900")
        as_json = own_demo_database.busflow("inspect", "--json")

    lines = [line.strip() for line in result.stdout.splitlines()]
    [outgoing] = [line for line in lines if line.startswith("! outgoing:")]
    assert "1 workflow(s) hold outgoing messages saved longer than 1 min ago" in outgoing
    assert f"the oldest, {own_demo_database.running['_id']}, for 10 min" in outgoing
    assert lines[-1] == "1 problem(s) found; see the lines marked with !"
    assert "outgoing:       none waiting longer than 15 min" in patient.stdout
    inspected = json.loads(as_json.stdout)
    assert inspected["problems"] == 1
    [collection] = inspected["collections"]
    assert collection["outgoing_waiting"] == 1
    [problem] = collection["problems"]
    assert problem.startswith("outgoing:     1 workflow(s) hold outgoing messages")


def test_inspect_reports_missing_and_differing_indexes_and_the_age_of_a_stuck_workflow(
    own_demo_database: DemoDatabase,
) -> None:
    with mongo_client(own_demo_database.uri) as client:
        collection = client[own_demo_database.name]["demo_order"]
        collection.drop_index("busflow_lookup_order_id")
        collection.drop_index("busflow_unique_running_order_id")
        collection.create_index([("order_id", 1)], name="busflow_unique_running_order_id")
        three_days_ago = datetime.now(UTC) - timedelta(days=3, hours=2, minutes=5)
        collection.update_one(
            {"_id": own_demo_database.running["_id"]}, {"$set": {"_updated_at": three_days_ago}}
        )

        result = own_demo_database.busflow("inspect")

        assert result.returncode == 0, result.stderr
        lines = [line.strip() for line in result.stdout.splitlines()]
        assert "indexes:        2 problem(s)" in lines
        assert any(line.startswith("! missing  busflow_lookup_order_id") for line in lines)
        assert (
            "! differs  busflow_unique_running_order_id: unique=False instead of True; "
            "partialFilterExpression None instead of {'_status': 'running'}; a bus will not "
            'start until you drop it (db.demo_order.dropIndex("busflow_unique_running_order_id"))'
        ) in lines
        [oldest] = [line for line in lines if line.startswith("oldest running:")]
        assert oldest.endswith(", 3 d 2 h ago")
        assert lines[-1] == "2 problem(s) found; see the lines marked with !"

        # The same keys under another name serve busflow as well (as the persistence sees it).
        collection.create_index([("order_id", 1), ("_status", 1)], name="by_order")
        again = [line.strip() for line in own_demo_database.busflow("inspect").stdout.splitlines()]
        assert "indexes:        1 problem(s)" in again
        assert "ok: busflow_lookup_order_id (as by_order)" in again


def test_inspect_of_a_database_without_workflows_is_an_error(wire_server: WireServer) -> None:
    result = run(BUSFLOW, "inspect", "--uri", wire_server.uri, "--database", "busflow_nothing")

    assert result.returncode == 1
    assert result.stdout == ""
    error = one_line_error(result)
    assert error.startswith("busflow: database 'busflow_nothing' at ")
    assert error.endswith(
        "has no workflow collections: busflow_workflows is empty or missing "
        "(a bus registers its workflows there when it starts); check --database"
    )


def test_uri_defaults_to_mongodb_uri(demo_database: DemoDatabase) -> None:
    result = run(
        BUSFLOW,
        "inspect",
        "--database",
        demo_database.name,
        environment={"MONGODB_URI": demo_database.uri},
    )

    assert result.returncode == 0, result.stderr
    assert "demo_order  (workflow demo/order" in result.stdout


# show


def test_show_prints_documents_by_status_as_relaxed_extended_json(
    demo_database: DemoDatabase,
) -> None:
    running = demo_database.busflow("show", "demo_order", "--status", "running")
    complete = demo_database.busflow("show", "demo_order", "--status", "complete")

    assert parse_documents(running.stdout) == [demo_database.running]
    assert parse_documents(complete.stdout) == [demo_database.completed]
    assert complete.stdout.count('"$date"') == 2, "_updated_at and _completed_at as $date"
    assert running.stderr.startswith("1 of 1 matching document(s) in ")


def test_show_finds_a_workflow_by_id_or_by_a_field(demo_database: DemoDatabase) -> None:
    completed = demo_database.completed

    by_id = demo_database.busflow("show", "demo_order", "--id", completed["_id"])
    by_field = demo_database.busflow("show", "demo_order", "--where", "customer=ada")
    by_python_name = demo_database.busflow(
        "show", "demo_order", "--where", f"workflow_id={completed['_id']}"
    )

    for result in (by_field, by_python_name):
        assert result.returncode == 0, result.stderr
        assert parse_documents(result.stdout) == [completed]
    document, record = by_id.stdout.split("\napplied message ids", 1)
    assert parse_documents(document) == [completed]
    assert record.startswith(f" ({len(completed['_applied'])}, oldest first):")


def test_show_by_id_prints_applied_ids_and_pending_outgoing_messages(
    own_demo_database: DemoDatabase,
) -> None:
    running = own_demo_database.running
    saved_at = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)
    waiting = {
        "message_id": "m-1",
        "name": "demo.ShipOrder",
        "body": "{}",
        "origin": "in-1",
        "saved_at": saved_at,
    }
    with mongo_client(own_demo_database.uri) as client:
        client[own_demo_database.name]["demo_order"].update_one(
            {"_id": running["_id"]}, {"$set": {"_outbox": [waiting]}}
        )

    result = own_demo_database.busflow("show", "demo_order", "--id", running["_id"])
    as_json = own_demo_database.busflow("show", "demo_order", "--id", running["_id"], "--json")

    assert result.returncode == 0, result.stderr
    record = result.stdout.split("\napplied message ids", 1)[1].splitlines()
    applied = running["_applied"]
    assert record[0] == f" ({len(applied)}, oldest first):"
    assert record[1 : 1 + len(applied)] == [f"  {message_id}" for message_id in applied]
    assert record[1 + len(applied) :] == [
        "pending outgoing messages (1):",
        "  m-1  demo.ShipOrder  saved 2026-11-26 09:30:00 UTC, sent while handling in-1",
    ]
    shown = json.loads(as_json.stdout)
    assert shown["applied"] == applied
    assert [each["message_id"] for each in shown["outbox"]] == ["m-1"]


def test_show_prints_one_json_object_with_json(demo_database: DemoDatabase) -> None:
    result = demo_database.busflow("show", "demo_order", "--status", "running", "--json")

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    shown = json.loads(result.stdout)
    assert shown["documents"] == [demo_database.running]
    assert (shown["matching"], shown["shown"]) == (1, 1)
    assert shown["collection"] == "demo_order"
    assert shown["filter"] == {"_status": {"$eq": "running"}}


def test_show_selects_documents_by_the_age_of_their_last_update(
    own_demo_database: DemoDatabase,
) -> None:
    three_hours_ago = datetime.now(UTC) - timedelta(hours=3)
    running = own_demo_database.running
    with mongo_client(own_demo_database.uri) as client:
        client[own_demo_database.name]["demo_order"].update_one(
            {"_id": running["_id"]}, {"$set": {"_updated_at": three_hours_ago}}
        )

    def ids(*args: str) -> list[str]:
        result = own_demo_database.busflow("show", "demo_order", *args)
        assert result.returncode == 0, result.stderr
        return [document["_id"] for document in parse_documents(result.stdout)]

    an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert ids("--older-than", "2h") == [running["_id"]]
    assert ids("--older-than", "1h59min30s") == [running["_id"]]
    assert ids("--older-than", "4h") == []
    assert ids("--updated-before", an_hour_ago) == [running["_id"]]
    assert ids("--updated-before", "2000-01-01T00:00:00") == []


def test_show_limits_the_documents_it_prints(demo_database: DemoDatabase) -> None:
    result = demo_database.busflow("show", "demo_order", "--limit", "1")

    assert len(parse_documents(result.stdout)) == 1
    assert result.stderr.startswith("1 of 2 matching document(s)")


def test_where_compares_a_value_as_a_plain_string_never_as_an_operator(
    own_demo_database: DemoDatabase,
) -> None:
    literal = '{"$ne":null}'
    with mongo_client(own_demo_database.uri) as client:
        client[own_demo_database.name]["demo_order"].insert_one(
            {"_id": "literal", "_status": "running", "order_id": literal}
        )

    result = own_demo_database.busflow("show", "demo_order", "--where", f"order_id={literal}")
    nothing = own_demo_database.busflow("show", "demo_order", "--where", "order_id={}")

    assert result.returncode == 0, result.stderr
    assert [document["_id"] for document in parse_documents(result.stdout)] == ["literal"]
    assert nothing.stdout == ""
    assert nothing.stderr.startswith("0 of 0 matching document(s)")


def test_show_of_an_unknown_collection_names_the_known_ones(demo_database: DemoDatabase) -> None:
    result = demo_database.busflow("show", "orders")

    assert result.returncode == 1
    error = one_line_error(result)
    assert error.startswith(f"busflow: no collection 'orders' in database '{demo_database.name}'")
    assert error.endswith("; its workflow collections are: demo_order")


# errors


@pytest.mark.parametrize(
    "args",
    [
        ["show"],
        ["show", "demo_order", "--limit", "0"],
        ["show", "demo_order", "--where", "order_id"],
        ["show", "demo_order", "--where", "$where=sleep(1000)"],
        ["show", "demo_order", "--id", "a", "--where", "order_id=b"],
        ["show", "demo_order", "--status", "stuck"],
        ["show", "demo_order", "--older-than", "soon"],
        ["show", "demo_order", "--older-than", "2h5"],
        ["show", "demo_order", "--older-than", "800000d"],
        ["show", "demo_order", "--updated-before", "yesterday"],
        ["inspect", "--timeout", "soon"],
        ["launch"],
        [],
    ],
    ids=lambda args: " ".join(args) or "(no command)",
)
def test_bad_arguments_exit_2_with_a_one_line_usage_error(args: list[str]) -> None:
    result = run(BUSFLOW, *args, "--uri", "mongodb://127.0.0.1:1/") if args else run(BUSFLOW)

    assert result.returncode == 2
    assert result.stdout == ""
    error = one_line_error(result)
    assert error.startswith("busflow")
    assert ": error: " in error
    assert error.endswith(" --help")


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--limit", "99999999999999999999"], "'99999999999999999999' is not between 1 and "),
        (["--limit", "2147483648"], "'2147483648' is not between 1 and 2147483647"),
        (["--where", os.fsdecode(b"order_id=\xff")], "is not valid UTF-8"),
        (["--id", os.fsdecode(b"\xc3(")], "is not valid UTF-8"),
    ],
    ids=["a limit beyond 64 bits", "a limit beyond 32 bits", "a --where value", "an --id"],
)
def test_a_value_no_server_could_take_is_a_one_line_usage_error(
    args: list[str], reason: str
) -> None:
    result = run(BUSFLOW, "show", "demo_order", *args, "--uri", "mongodb://127.0.0.1:1/")

    assert result.returncode == 2
    assert reason in one_line_error(result)


@pytest.mark.parametrize(
    ("command", "status"), [("inspect", 2), ("show", 2), ("demo", 1)], ids=lambda arg: str(arg)
)
def test_a_port_out_of_range_is_one_line_and_never_shows_the_password(
    command: str, status: int
) -> None:
    uri = "mongodb://user:s3cret@127.0.0.1:99999/"
    args = [command, "--uri", uri] + (["demo_order"] if command == "show" else [])

    result = run(BUSFLOW, *args)

    assert result.returncode == status
    assert "s3cret" not in result.stdout + result.stderr
    error = one_line_error(result)
    assert "bad " in error
    assert "Port must be an integer between 0 and 65535" in error


@pytest.mark.parametrize(
    "corruption",
    [
        {"$set": {"indexes": 5}},
        {"$set": {"indexes": [{"name": "busflow_lookup_order_id", "key": "order_id"}]}},
        {"$set": {"fields": ["order_id"]}},
    ],
    ids=["indexes not a list", "an index key not a document", "fields not a document"],
)
def test_a_corrupted_registry_entry_is_reported_not_a_traceback(
    own_demo_database: DemoDatabase, corruption: dict[str, Any]
) -> None:
    with mongo_client(own_demo_database.uri) as client:
        registry = client[own_demo_database.name]["busflow_workflows"]
        registry.update_one({"_id": "demo_order"}, corruption)
        registry.insert_one({"_id": 5, "workflow_name": ["not", "a", "name"]})

    inspected = own_demo_database.busflow("inspect")
    shown = own_demo_database.busflow("show", "demo_order", "--where", "customer=ada")

    assert "Traceback" not in inspected.stderr + shown.stderr
    assert inspected.returncode == 0, inspected.stderr
    lines = [line.strip() for line in inspected.stdout.splitlines()]
    assert (
        "! busflow cannot read this entry: its _id is not a collection name; fix or delete it "
        "(db.busflow_workflows.deleteOne({_id: 5})), and the next bus start registers its "
        "workflow again" in lines
    )
    assert any(line.startswith("! busflow cannot read this entry: its ") for line in lines[3:])
    assert lines[-1] == "2 problem(s) found; see the lines marked with !"
    assert shown.returncode == 0, shown.stderr
    assert parse_documents(shown.stdout) == [own_demo_database.completed]


def test_no_server_given_is_a_one_line_error() -> None:
    result = run(BUSFLOW, "inspect")

    assert result.returncode == 2
    assert one_line_error(result) == (
        "busflow: no server given: pass --uri mongodb://HOST/ or set MONGODB_URI"
    )


def test_a_bad_connection_string_is_a_one_line_error() -> None:
    result = run(BUSFLOW, "inspect", "--uri", "http://user:s3cret@example.com/")

    assert result.returncode == 2
    assert "s3cret" not in result.stdout + result.stderr
    assert one_line_error(result).startswith(
        "busflow: bad connection string http://user:***@example.com/: Invalid URI scheme"
    )


@pytest.mark.parametrize(
    "args", [["inspect"], ["show", "demo_order"], ["demo"]], ids=lambda args: args[0]
)
def test_an_unreachable_server_is_one_line_and_never_shows_the_password(args: list[str]) -> None:
    command, *rest = args
    result = run(BUSFLOW, command, "--uri", UNREACHABLE_WITH_PASSWORD, "--timeout", "1", *rest)

    assert result.returncode == 1
    assert "s3cret" not in result.stdout + result.stderr
    assert "cannot reach MongoDB at 127.0.0.1:1 within 1 s" in one_line_error(result)


def test_a_reader_that_goes_away_ends_show_quietly(demo_database: DemoDatabase) -> None:
    """``busflow show ... | head -1`` must not end in a BrokenPipeError traceback."""
    db = demo_database.name
    read, write = os.pipe()
    os.close(read)  # the reader is gone before busflow writes
    with os.fdopen(write, "w") as gone:
        result = subprocess.run(
            [*BUSFLOW, "show", "demo_order", "--uri", demo_database.uri, "--database", db],
            stdout=gone,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )

    assert result.returncode == 1
    assert result.stderr == ""
