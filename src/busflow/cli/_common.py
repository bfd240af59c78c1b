"""What the CLI's commands share: one-line errors, relaxed JSON, argument types."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from bson import json_util
from bson.binary import UuidRepresentation

__all__ = [
    "DEMO_DATABASE",
    "DEMO_QUEUE",
    "PROGRAM",
    "RELAXED_JSON",
    "CommandError",
    "CommandParser",
    "add_demo_arguments",
    "positive_seconds",
]

PROGRAM = "busflow"
DEMO_DATABASE = "busflow_demo"
"""The database the demo uses unless ``--database`` names another."""
DEMO_QUEUE = "busflow-demo"
"""The queue (and the prefix of the exchanges) of the demo on RabbitMQ, unless ``--queue``."""

RELAXED_JSON = json_util.RELAXED_JSON_OPTIONS.with_options(
    uuid_representation=UuidRepresentation.STANDARD
)
"""Relaxed Extended JSON, as mongosh prints documents; UUIDs as standard (subtype 4) binaries."""


class CommandError(Exception):
    """A failure to report as one line on standard error, with an exit status."""

    def __init__(self, message: str, exit_status: int = 1) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, as every other error of the CLI."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")

    def parse_command_line(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        """Parse ``argv`` (by default the command line), refusing an argument that is not
        valid UTF-8: it reaches Python with lone surrogates, which no query or name can hold."""
        arguments = sys.argv[1:] if argv is None else list(argv)
        for text in arguments:
            try:
                text.encode()
            except UnicodeEncodeError:
                self.error(f"the argument {text!a} is not valid UTF-8; pass text in UTF-8")
        return self.parse_args(arguments)


def positive_seconds(text: str) -> float:
    """An argparse type: a timeout in seconds, above 0 and below an hour."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < seconds < 3_600:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 3600 seconds")
    return seconds


# demo


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options, shared by ``busflow demo`` and ``examples/order_saga.py``."""
    parser.add_argument(
        "--uri",
        help="MongoDB connection string (default: MONGODB_URI, else an embedded server)",
    )
    parser.add_argument(
        "--database",
        default=DEMO_DATABASE,
        help=f"database to use (default: {DEMO_DATABASE})",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=5.0,
        help="seconds to wait for the server (default: 5)",
    )
    parser.add_argument(
        "--amqp",
        help="RabbitMQ URL: run the order service as two worker processes that share a queue "
        "there and the database (default: AMQP_URL, else one process, no broker)",
    )
    parser.add_argument(
        "--queue",
        default=DEMO_QUEUE,
        help=f"with --amqp, the workers' queue and the prefix of its exchanges "
        f"(default: {DEMO_QUEUE})",
    )
