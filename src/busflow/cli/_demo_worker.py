"""One worker process of ``busflow demo --amqp``: an instance of the order service on
RabbitMQ and MongoDB, until SIGTERM, when it finishes what it holds and stops.

    AMQP_URL=... MONGODB_URI=... python -m busflow.cli._demo_worker --database DB --queue Q

The connection strings come from the environment, so that no password shows in ``ps``. It
prints ``ready`` once its bus has started and, when it stops, what it handled.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from busflow.cli._demo import build_bus
from busflow.mongodb import MongoPersistence
from busflow.rabbitmq import RabbitMQTransport


async def serve(database: str, queue: str) -> None:
    persistence = MongoPersistence(os.environ["MONGODB_URI"], database=database)
    transport = RabbitMQTransport(os.environ["AMQP_URL"], queue=queue, prefix=queue)
    bus = build_bus(persistence, transport)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    try:
        async with bus:
            print("ready", flush=True)
            await stop.wait()
    finally:
        await persistence.dispose()
    metrics = bus.metrics
    print(
        f"handled {metrics.messages_delivered} message(s); {metrics.conflicts} save(s) lost a "
        "race and were run again on fresh state",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m busflow.cli._demo_worker")
    parser.add_argument("--database", required=True)
    parser.add_argument("--queue", required=True)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(serve(arguments.database, arguments.queue))


if __name__ == "__main__":
    main()
