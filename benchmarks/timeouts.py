"""What a bus's poll for due timeouts costs, in MongoDB commands and time.

    .venv/bin/python benchmarks/timeouts.py [--pending N]

Against ``MONGODB_URI`` when set, else a mongoeco wire server in its own process, it polls as a bus
does (``MongoPersistence.claim_due_messages``) with nothing stored, then with ``--pending``
messages stored but not yet due (10,000 by default), then with 100 of them due. It prints
the commands each poll sent (PyMongo's command monitoring) and its median time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient, monitoring

from busflow import ScheduledMessage, TransportMessage
from busflow.mongodb import MongoPersistence, redact_uri

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import embedded_server


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def scheduled(due_at: datetime) -> ScheduledMessage:
    message = TransportMessage("bench.Timeout", uuid.uuid4().hex, b'{"order_id":"o-1"}')
    return ScheduledMessage(message, False, due_at, "bench/order", uuid.uuid4().hex)


async def poll(
    persistence: MongoPersistence, commands: Commands, rounds: int
) -> tuple[float, float, int]:
    """Mean commands per poll, median ms per poll, and messages claimed, over ``rounds``."""
    counts, times, claimed = [], [], 0
    for _ in range(rounds):
        commands.names.clear()
        started = time.perf_counter()
        got = await persistence.claim_due_messages(
            datetime.now(UTC), owner="bench", lease=timedelta(seconds=30), limit=100
        )
        times.append((time.perf_counter() - started) * 1000)
        counts.append(len(commands.names))
        claimed += len(got)
    return statistics.mean(counts), statistics.median(times), claimed


async def measure(uri: str, pending: int) -> list[tuple[str, float, float, int]]:
    commands = Commands()
    client: AsyncMongoClient[Any] = AsyncMongoClient(uri, event_listeners=[commands])
    database = f"busflow_bench_timeouts_{uuid.uuid4().hex[:8]}"
    persistence = MongoPersistence(client=client, database=database)
    rows = []
    try:
        await persistence.initialize()
        await poll(persistence, commands, 1)  # creates the due_at index once
        rows.append(("nothing stored", *await poll(persistence, commands, 20)))
        later = datetime.now(UTC) + timedelta(hours=1)
        for start in range(0, pending, 100):
            await persistence.schedule_messages(
                [scheduled(later) for _ in range(min(100, pending - start))]
            )
        rows.append((f"{pending:,} pending, none due", *await poll(persistence, commands, 20)))
        await persistence.schedule_messages(
            [scheduled(datetime.now(UTC) - timedelta(seconds=1)) for _ in range(100)]
        )
        rows.append((f"{pending:,} pending, 100 due", *await poll(persistence, commands, 1)))
    finally:
        await client.drop_database(database)
        await client.close()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pending", type=int, default=10_000)
    arguments = parser.parse_args(argv)
    uri = os.environ.get("MONGODB_URI")
    if uri:
        label = f"MongoDB at {redact_uri(uri)}"
        rows = asyncio.run(measure(uri, arguments.pending))
    else:
        with embedded_server() as started:
            label = f"mongoeco wire server at {started} (its own process)"
            rows = asyncio.run(measure(started, arguments.pending))
    print(f"timeout polls against {label}")
    print(f"{'stored':<28} {'commands/poll':>14} {'ms/poll (median)':>17} {'claimed':>8}")
    for what, per_poll, milliseconds, claimed in rows:
        print(f"{what:<28} {per_poll:>14.1f} {milliseconds:>17.2f} {claimed:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
