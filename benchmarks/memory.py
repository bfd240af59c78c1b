"""The in-memory path: the order saga on MemoryTransport and InMemoryPersistence.

    .venv/bin/python benchmarks/memory.py [--rounds N] [--check]

It runs bench.py's order workload (orders x (start + 5 items + payment)) at concurrency 10,
once on an empty persistence and once beside 2,000 other stored workflows, each ``--rounds``
times, and prints the median messages/s of each with the targets. It uses the recommended
configuration: ``order_id`` is ``unique_running``, so the items and the payment that wait for
one order are coalesced (the bus's default) into one save. Every run must end with
every order correct; ``--check`` exits non-zero if one does not. Timing targets are reported,
never checked: they depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import (
    OrderState,
    OrderWorkflow,
    check_orders,
    order_ids,
    publish_orders,
)

from busflow import Bus, InMemoryPersistence

CONCURRENCY = 10
ORDERS = 1_000
STORED = 2_000
TARGETS = {"empty": 35_000, "2,000 stored": 30_000}


async def one_run(stored: int) -> tuple[float, float, int]:
    """Messages/s and CPU µs per message of one saga run, and how many orders ended wrong."""
    persistence = InMemoryPersistence().with_workflow_options(
        OrderState, unique_running=["order_id"]
    )
    bus = (
        Bus.configure()
        .with_persistence(persistence)
        .with_workflow(OrderWorkflow)
        .with_concurrency(CONCURRENCY)
        .build()
    )
    async with bus:
        for n in range(stored):
            await persistence.save_workflow_state(
                OrderState(workflow_id=f"other-{n}", order_id=f"other-{n}")
            )
        ids = order_ids(ORDERS)
        started, cpu_started = time.perf_counter(), time.process_time()
        await publish_orders(bus, ids)
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
        wrong = await check_orders(persistence, ids)
    messages = bus.metrics.messages_delivered
    return messages / seconds, cpu_seconds / messages * 1e6, len(wrong)


async def measure(rounds: int) -> dict[str, tuple[float, float, int]]:
    rates: dict[str, list[float]] = {name: [] for name in TARGETS}
    cpu: dict[str, list[float]] = {name: [] for name in TARGETS}
    wrong: dict[str, int] = dict.fromkeys(TARGETS, 0)
    for _ in range(rounds):  # interleaved, so drift hits both alike
        for name, stored in (("empty", 0), ("2,000 stored", STORED)):
            rate, cpu_us, bad = await one_run(stored)
            rates[name].append(rate)
            cpu[name].append(cpu_us)
            wrong[name] += bad
    return {
        name: (statistics.median(rates[name]), statistics.median(cpu[name]), wrong[name])
        for name in TARGETS
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="fail if an order ended wrong")
    arguments = parser.parse_args(argv)
    results = asyncio.run(measure(arguments.rounds))
    print(
        f"in-memory order saga: {ORDERS} orders x 7 messages, concurrency {CONCURRENCY}, "
        f"median of {arguments.rounds}; CPython {platform.python_version()}, "
        f"{platform.machine()}"
    )
    print(
        f"{'workload':<16} {'messages/s':>12} {'target':>10} {'CPU µs/message':>16} "
        f"{'orders wrong':>14}"
    )
    for name, (rate, cpu_us, wrong) in results.items():
        print(f"{name:<16} {rate:>12,.0f} {TARGETS[name]:>10,} {cpu_us:>16.1f} {wrong:>14}")
    print(json.dumps({name: round(rate) for name, (rate, _, _) in results.items()}))
    failed = arguments.check and any(wrong for _, _, wrong in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
