"""``busflow dead-letters list|replay``, run as an operator would, on the tier's broker."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from busflow import Bus, Message, MessageAttributes, RetryPolicy
from busflow.rabbitmq import hosts_of
from tests.conftest import RabbitMQServer
from tests.rabbitmq.conftest import Endpoint
from tests.test_order_saga import run

BUSFLOW = [sys.executable, "-m", "busflow.cli"]


class Charge(Message):
    message_name = "busflow-test.Charge"
    card: str


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    return line


def dead_letters(endpoint: Endpoint, action: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run(
        BUSFLOW,
        "dead-letters",
        action,
        "--queue",
        endpoint.name,
        *args,
        environment={"AMQP_URL": endpoint.url},
    )


class Payments:
    """An endpoint whose handler declines some cards until it is fixed."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.fixed = False
        self.charged: list[str] = []

        async def charge(message: Charge, attributes: MessageAttributes) -> None:
            if message.card.startswith("bad") and not self.fixed:
                raise ValueError(f"card {message.card} was declined")
            self.charged.append(message.card)

        self.bus = (
            Bus.configure()
            .with_transport(endpoint.transport())
            .with_handler(Charge, charge)
            .with_retry_policy(RetryPolicy(max_attempts=1))
            .build()
        )

    async def charge(self, *cards: str) -> None:
        for card in cards:
            await self.bus.send(Charge(card=card), MessageAttributes(message_id=f"charge-{card}"))
        await self.bus.wait_until_idle(timeout=10)

    async def wait_for(self, *cards: str) -> None:
        for _ in range(500):
            if sorted(self.charged) == sorted(cards):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"charged {self.charged}, not {list(cards)}")


async def test_list_prints_each_dead_letter_and_leaves_it_in_place(endpoint: Endpoint) -> None:
    payments = Payments(endpoint)
    async with payments.bus:
        await payments.charge("good-1", "bad-1", "bad-2")
        listed = await asyncio.to_thread(dead_letters, endpoint, "list")
        again = await asyncio.to_thread(dead_letters, endpoint, "list", "--traceback")

    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        "charge-bad-1  busflow-test.Charge  attempts 1, handler Payments.__init__.<locals>.charge",
        "  builtins.ValueError: card bad-1 was declined",
        "charge-bad-2  busflow-test.Charge  attempts 1, handler Payments.__init__.<locals>.charge",
        "  builtins.ValueError: card bad-2 was declined",
    ]
    assert listed.stderr == (
        f"2 dead letter(s) in {endpoint.name}.dead-letter at {hosts_of(endpoint.url)}, "
        "oldest first\n"
    )
    assert again.returncode == 0, again.stderr
    assert "  | ValueError: card bad-1 was declined" in again.stdout.splitlines()


async def test_replay_of_one_id_or_all_sends_them_back_to_be_handled(endpoint: Endpoint) -> None:
    payments = Payments(endpoint)
    async with payments.bus:
        await payments.charge("bad-1", "bad-2", "bad-3")
        payments.fixed = True

        one = await asyncio.to_thread(dead_letters, endpoint, "replay", "--id", "charge-bad-2")
        await payments.wait_for("bad-2")
        rest = await asyncio.to_thread(dead_letters, endpoint, "replay", "--all")
        await payments.wait_for("bad-1", "bad-2", "bad-3")
        left = await asyncio.to_thread(dead_letters, endpoint, "list")

    assert one.returncode == 0, one.stderr
    assert one.stdout == (
        f"replayed 1 dead letter(s) from {endpoint.name}.dead-letter to {endpoint.name} at "
        f"{hosts_of(endpoint.url)}: each is handled again, as a first attempt\n"
    )
    assert rest.returncode == 0, rest.stderr
    assert rest.stdout.startswith("replayed 2 dead letter(s)")
    assert left.stdout == ""
    assert left.stderr.startswith("0 dead letter(s)")


async def test_replay_of_an_unknown_id_is_a_one_line_error(endpoint: Endpoint) -> None:
    payments = Payments(endpoint)
    async with payments.bus:
        await payments.charge("bad-1")
        result = await asyncio.to_thread(dead_letters, endpoint, "replay", "--id", "nope")
    assert one_line_error(result) == (
        f"busflow: no dead letter with id 'nope' in {endpoint.name}.dead-letter at "
        f"{hosts_of(endpoint.url)}; see the ids with busflow dead-letters list "
        f"--queue {endpoint.name}"
    )


def test_an_unknown_queue_is_a_one_line_error(endpoint: Endpoint) -> None:
    result = dead_letters(endpoint, "list")
    assert one_line_error(result) == (
        f"busflow: RabbitMQ at {hosts_of(endpoint.url)} has no queue "
        f"'{endpoint.name}.dead-letter'; "
        f"check the queue name (a bus declares '{endpoint.name}' and "
        f"'{endpoint.name}.dead-letter' when it starts)"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "amqp://operator:s3cret-pw@127.0.0.1:1/",
            "busflow: cannot reach RabbitMQ at 127.0.0.1:1 within 1 s (",
        ),
        (
            "amqp://guest:s3cret-pw@{hosts}/",
            "busflow: RabbitMQ at {hosts} refused the login of user 'guest'",
        ),
        ("https://operator:s3cret-pw@127.0.0.1/", "busflow: https://operator:***@127.0.0.1/"),
    ],
)
def test_a_broker_that_cannot_be_used_is_one_line_and_never_shows_the_password(
    rabbitmq: RabbitMQServer, url: str, expected: str
) -> None:
    hosts = hosts_of(rabbitmq.url)
    url, expected = url.format(hosts=hosts), expected.format(hosts=hosts)
    for action in (["list"], ["replay", "--all"]):
        result = run(
            BUSFLOW, "dead-letters", *action, "--amqp", url, "--queue", "q", "--timeout", "1"
        )
        line = one_line_error(result)
        assert line.startswith(expected)
        assert "s3cret-pw" not in result.stderr + result.stdout


def test_no_broker_given_is_a_one_line_usage_error() -> None:
    result = run(BUSFLOW, "dead-letters", "list", "--queue", "q", environment={"AMQP_URL": ""})
    assert result.returncode == 2
    assert one_line_error(result) == (
        "busflow: no broker given: pass --amqp amqp://USER:PASSWORD@HOST:5672/ or set AMQP_URL"
    )
