"""A worker process of the multi-process tests: the order saga's endpoint, on RabbitMQ and
MongoDB, until SIGTERM (a graceful stop) or SIGKILL.

    python -m tests.rabbitmq.worker --amqp URL --mongodb URI --database DB --queue Q
        --prefix P [--concurrency N] [--max-attempts N] [--kill-at POINT --kill-after N]

It prints ``ready`` once its bus has started, and ``conflicts N retries N`` once stopped.
``--kill-at`` injects a fault, here and not in busflow: the process SIGKILLs itself the
``--kill-after``-th time it reaches the point, after printing ``killed at POINT``:

- ``save-then-dispatch``: a save that completed an order has returned, and the
  ``OrderCompleted`` it publishes has not left;
- ``dispatch-then-ack``: an ``ItemAdded`` was handled, saved (its order still running) and
  its messages sent, and its delivery is about to be acknowledged;
- ``during-handler``: an ``ItemAdded`` handler has started and saved nothing yet.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from busflow import (
    Bus,
    Delivery,
    MessageAttributes,
    RetryPolicy,
    WorkflowState,
    WorkflowStatus,
)
from busflow.mongodb import MongoPersistence
from busflow.rabbitmq import RabbitMQTransport
from tests.rabbitmq.saga import COMPLETIONS, ItemAdded, OrderCompleted, OrderState, OrderWorkflow

KILL_POINTS = ("save-then-dispatch", "dispatch-then-ack", "during-handler")


class Fault:
    """SIGKILLs this process the ``after``-th time it reaches ``point``."""

    def __init__(self, point: str | None, after: int) -> None:
        self.point = point
        self.left = after

    def reached(self, point: str) -> None:
        if point != self.point:
            return
        self.left -= 1
        if self.left <= 0:
            print(f"killed at {point}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


class FaultyPersistence(MongoPersistence):
    def __init__(self, fault: Fault, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fault = fault
        self.left_running: set[str] = set()
        """The ids of the ItemAdded messages whose save left their order running."""

    async def save_workflow_state(self, state: WorkflowState) -> WorkflowState:
        stored = await super().save_workflow_state(state)
        if isinstance(state, OrderState) and state.applied:
            if state.workflow_status is WorkflowStatus.COMPLETE:
                self.fault.reached("save-then-dispatch")
            else:
                self.left_running.add(state.applied[-1])
        return stored


class FaultyTransport(RabbitMQTransport):
    def __init__(
        self, fault: Fault, persistence: FaultyPersistence, *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fault = fault
        self.persistence = persistence

    async def complete(self, delivery: Delivery) -> None:
        if delivery.message.message_id in self.persistence.left_running:
            self.fault.reached("dispatch-then-ack")
        await super().complete(delivery)


class FaultyOrderWorkflow(OrderWorkflow):
    def __init__(self, fault: Fault) -> None:
        self.fault = fault

    async def item_added(
        self, message: ItemAdded, state: OrderState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        self.fault.reached("during-handler")
        return await super().item_added(message, state, attributes)


def build_bus(arguments: argparse.Namespace) -> Bus:
    fault = Fault(arguments.kill_at, arguments.kill_after)
    persistence = FaultyPersistence(fault, arguments.mongodb, database=arguments.database)
    transport = FaultyTransport(
        fault,
        persistence,
        arguments.amqp,
        queue=arguments.queue,
        prefix=arguments.prefix,
        partitions=arguments.partitions,
    )

    async def count_completion(message: OrderCompleted, attributes: MessageAttributes) -> None:
        await persistence.database[COMPLETIONS].update_one(
            {"_id": message.order_id}, {"$inc": {"count": 1}}, upsert=True
        )

    return (
        Bus.configure()
        .with_persistence(persistence)
        .with_transport(transport)
        .with_workflow(FaultyOrderWorkflow(fault))
        .with_handler(OrderCompleted, count_completion)
        .with_concurrency(arguments.concurrency)
        .with_retry_policy(RetryPolicy(max_attempts=arguments.max_attempts))
        .build()
    )


async def serve(arguments: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    bus = build_bus(arguments)
    async with bus:
        print("ready", flush=True)
        await stop.wait()
    metrics = bus.metrics
    print(f"conflicts {metrics.conflicts} retries {metrics.retries}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.rabbitmq.worker")
    parser.add_argument("--amqp", required=True)
    parser.add_argument("--mongodb", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--partitions", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--max-attempts", type=int, default=10)
    parser.add_argument("--kill-at", choices=KILL_POINTS)
    parser.add_argument("--kill-after", type=int, default=1)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
