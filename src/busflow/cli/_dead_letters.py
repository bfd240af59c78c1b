"""``busflow dead-letters list|replay``: an endpoint's dead letters on RabbitMQ.

Imported only by these commands: the others never load aio-pika.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, TypeVar

from busflow import BusflowError, DeadLetter
from busflow.cli._common import CommandError
from busflow.mongodb import mask_password

if TYPE_CHECKING:  # the type only: the other commands never import aio-pika
    from busflow.rabbitmq import DeadLetterQueue

__all__ = [
    "amqp_url_of",
    "format_dead_letter",
    "list_dead_letters",
    "quiet_driver_logs",
    "replay_dead_letters",
]

T = TypeVar("T")


def amqp_url_of(arguments: argparse.Namespace) -> str:
    url: str | None = arguments.amqp or os.environ.get("AMQP_URL")
    if not url:
        raise CommandError(
            "no broker given: pass --amqp amqp://USER:PASSWORD@HOST:5672/ or set AMQP_URL",
            exit_status=2,
        )
    return url


def list_dead_letters(arguments: argparse.Namespace) -> int:
    """Print the dead letters of ``--queue``, oldest first; they stay where they are."""
    url = amqp_url_of(arguments)

    async def read() -> tuple[str, str, list[DeadLetter]]:
        async with _dead_letter_queue(url, arguments) as queue:
            return queue.name, queue.hosts, await queue.list(limit=arguments.limit)

    name, hosts, letters = _run(read(), url)
    for letter in letters:
        print(format_dead_letter(letter, traceback=arguments.traceback))
    print(f"{len(letters)} dead letter(s) in {name} at {hosts}, oldest first", file=sys.stderr)
    return 0


def replay_dead_letters(arguments: argparse.Namespace) -> int:
    """Send the dead letter ``--id`` (or ``--all``) back to ``--queue``."""
    url = amqp_url_of(arguments)

    async def replay() -> tuple[str, str, int]:
        async with _dead_letter_queue(url, arguments) as queue:
            return queue.name, queue.hosts, await queue.replay(arguments.id)

    name, hosts, replayed = _run(replay(), url)
    if arguments.id is not None and not replayed:
        raise CommandError(
            f"no dead letter with id {arguments.id!r} in {name} at {hosts}; see the ids with "
            f"busflow dead-letters list --queue {arguments.queue}"
        )
    print(
        f"replayed {replayed} dead letter(s) from {name} to {arguments.queue} at {hosts}: "
        "each is handled again, as a first attempt"
    )
    return 0


def format_dead_letter(letter: DeadLetter, *, traceback: bool) -> str:
    message = letter.message
    lines = [
        f"{message.message_id}  {message.name or '(no name)'}  attempts {letter.attempts}, "
        f"handler {letter.handler}",
        f"  {letter.error_type}: {' '.join(letter.error_text.split())}",
    ]
    if message.correlation_id:
        lines.append(f"  correlation id {message.correlation_id}")
    if traceback and letter.traceback:
        lines += [f"  | {line}" for line in letter.traceback.rstrip().splitlines()]
    return "\n".join(lines)


def _dead_letter_queue(url: str, arguments: argparse.Namespace) -> DeadLetterQueue:
    try:
        from busflow.rabbitmq import DeadLetterQueue
    except ImportError as error:
        raise CommandError(str(error)) from None
    return DeadLetterQueue(url, queue=arguments.queue, connect_timeout=arguments.timeout)


def quiet_driver_logs() -> None:
    """Keep the AMQP driver's own log records off standard error: busflow's one-line error
    says what failed. (With no handler configured, Python would print its warnings.)"""
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).addHandler(logging.NullHandler())


def _run(work: Coroutine[object, object, T], url: str) -> T:
    """Run ``work``; a busflow error becomes one line, without the password."""
    quiet_driver_logs()
    try:
        return asyncio.run(work)
    except BusflowError as error:
        raise CommandError(mask_password(str(error), url)) from None
