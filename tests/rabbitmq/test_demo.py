"""``busflow demo --amqp``: the order saga on two worker processes sharing a queue and a
database, run as a user would."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from busflow.cli._demo import ItemAdded, OrderPlaced, OrderShipped, PaymentReceived, ShipOrder
from busflow.rabbitmq import redact_uri
from tests.conftest import RabbitMQServer, WireServer
from tests.rabbitmq.conftest import Endpoint
from tests.test_order_saga import (
    BUSFLOW_DEMO,
    EXAMPLE,
    DemoOutput,
    assert_one_order_completed_and_one_running,
    mongo_client,
    run,
)

DEMO_MESSAGES = [
    message.message_name
    for message in (OrderPlaced, ItemAdded, PaymentReceived, ShipOrder, OrderShipped)
]


@pytest.fixture
def queue(endpoint: Endpoint) -> str:
    """A queue name of its own; its queues and the demo's exchanges are deleted after."""
    endpoint.message_names += DEMO_MESSAGES
    return endpoint.name


@pytest.fixture
def database(wire_server: WireServer, queue: str) -> Iterator[str]:
    yield queue
    with mongo_client(wire_server.uri) as client:
        client.drop_database(queue)


def worker_lines(output: DemoOutput) -> list[str]:
    return [line.strip() for line in output.what_happened if line.strip().startswith("worker ")]


def test_demo_runs_the_saga_on_two_worker_processes_sharing_a_queue(
    rabbitmq: RabbitMQServer, wire_server: WireServer, database: str, queue: str
) -> None:
    output = DemoOutput.of(
        run(
            BUSFLOW_DEMO,
            *("--amqp", rabbitmq.url, "--uri", wire_server.uri),
            *("--database", database, "--queue", queue),
        )
    )

    assert output.first_line.endswith(
        f", with RabbitMQ at {redact_uri(rabbitmq.url)} (from --amqp)"
    )
    assert_one_order_completed_and_one_running(output)
    workers = worker_lines(output)
    assert [line.split(":")[0] for line in workers] == ["worker process 1", "worker process 2"]
    handled = [int(line.split("handled ")[1].split()[0]) for line in workers]
    assert all(count > 0 for count in handled), "each process took a share of the work"
    assert sum(handled) == 2 + 5 + 1 + 1 + 1  # placed, items, paid, ship, shipped
    assert (
        f'busflow dead-letters list --amqp "{redact_uri(rabbitmq.url)}" --queue {queue}'
        in output.shell_commands
    )


def test_the_example_takes_the_broker_from_amqp_url(
    rabbitmq: RabbitMQServer, wire_server: WireServer, database: str, queue: str
) -> None:
    output = DemoOutput.of(
        run(
            EXAMPLE,
            *("--uri", wire_server.uri, "--database", database, "--queue", queue),
            environment={"AMQP_URL": rabbitmq.url},
        )
    )
    assert output.first_line.startswith("order_saga: running on MongoDB at ")
    assert output.first_line.endswith("(from AMQP_URL)")
    assert_one_order_completed_and_one_running(output)
    assert len(worker_lines(output)) == 2


def test_an_unreachable_broker_is_one_line_without_the_password(
    wire_server: WireServer,
) -> None:
    result = run(
        BUSFLOW_DEMO,
        *("--amqp", "amqp://user:s3cret-pw@127.0.0.1:1/", "--uri", wire_server.uri),
        *("--database", "busflow_demo_unreachable", "--timeout", "1"),
    )
    assert result.returncode == 1
    assert "s3cret-pw" not in result.stdout + result.stderr
    [error] = result.stderr.splitlines()
    assert error.startswith("busflow demo: cannot reach RabbitMQ at 127.0.0.1:1 within ")


def test_without_a_database_to_share_it_says_what_to_do(rabbitmq: RabbitMQServer) -> None:
    block_mongoeco = "import sys; sys.modules['mongoeco'] = None; "
    run_demo = "from busflow.cli import demo_main; raise SystemExit(demo_main([]))"
    result = run(
        [sys.executable, "-c", block_mongoeco + run_demo], environment={"AMQP_URL": rabbitmq.url}
    )
    assert result.returncode == 1
    [error] = result.stderr.splitlines()
    assert error == (
        "order_saga: with --amqp the worker processes need a MongoDB they can share: pass "
        '--uri mongodb://HOST/, or pip install "mongoeco[wire]" for an embedded one'
    )
