"""Dispatch: one delivery, from the transport to its subscribers and back to a settlement."""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Awaitable, Callable, Hashable

from busflow._bus.context import HandlingContext, Outgoing
from busflow._bus.handling import Failure, Handling
from busflow._bus.metrics import BusMetrics
from busflow._bus.ordering import Job, Turns, WorkflowKeys
from busflow._bus.outbox import Dispatchable, Outbox
from busflow._bus.retries import RetryPolicy, is_retryable
from busflow._bus.routing import PlainSubscriber, Routes, Subscriber
from busflow._bus.runner import WaitingRun, WorkflowRunner
from busflow._bus.telemetry import Telemetry
from busflow._errors import MessageDecodeError
from busflow._logs import about_message, error_for_log, timed
from busflow._transport import DeadLetter, Delivery, Transport, TransportMessage
from busflow._workflow import WorkflowSender

__all__ = ["Dispatcher"]


class Dispatcher:
    """Decodes a delivery, runs each subscriber's unit in its turn, then settles it.

    The delivery is acknowledged once every unit succeeded. A retryable failure hands it back
    to the transport for a later attempt that skips what already finished; a failure that
    can only recur, or the last attempt, dead-letters it.
    """

    def __init__(
        self,
        *,
        routes: Routes,
        runner: WorkflowRunner,
        transport: Transport,
        sender: WorkflowSender,
        encode: Callable[[Outgoing], Dispatchable],
        outbox: Outbox,
        turns: Turns | None,
        keys: WorkflowKeys,
        policy: RetryPolicy,
        metrics: BusMetrics,
        logger: logging.Logger,
        values_in_logs: bool,
        telemetry: Telemetry,
        settled: Callable[[TransportMessage, bool], None],
    ) -> None:
        self._routes = routes
        self._runner = runner
        self._transport = transport
        self._sender = sender
        self._encode = encode
        self._outbox = outbox
        self._turns = turns
        self._keys = keys
        self._policy = policy
        self._metrics = metrics
        self._logger = logger
        self._values_in_logs = values_in_logs
        self._telemetry = telemetry
        self._settled = settled
        """Told of each settled delivery, and whether it will come back for a retry."""

    async def handle(self, delivery: Delivery) -> None:
        with about_message(delivery.message), self._telemetry.delivery(delivery.message):
            self._metrics.messages_delivered += 1
            try:
                message, attributes = self._routes.decode(delivery.message)
            except MessageDecodeError as error:
                await self._dead_letter(delivery, [Failure("busflow", error)], completed=())
                return
            handling = Handling(delivery, message, attributes, settle=self._settle)
            turns = self._turns
            for key, job in self._plan(handling):
                if key is None or turns is None:
                    await job()
                else:
                    await turns.run(key, job)
            await handling.unit_done()

    def _plan(self, handling: Handling) -> list[tuple[Hashable | None, Job]]:
        """A unit per subscriber not done yet: the units to run now, each with the ordering
        key whose turn it claimed; the others wait behind their key's holder.

        Each workflow's turn is claimed before any handler runs, so that arrival order holds
        even while an earlier subscriber of this message awaits.
        """
        turns = self._turns
        plan: list[tuple[Hashable | None, Job]] = []
        for subscriber in self._routes.subscribers(handling.delivery.message.name):
            if handling.already_done(subscriber.name):
                continue
            if (
                turns is None
                or isinstance(subscriber, PlainSubscriber)
                or subscriber.route.starts_workflow
            ):
                # no turn to take: a start makes a new workflow, a plain handler has none
                plan.append((None, self._unit(subscriber, handling, None, queued=False)))
                continue
            mapping = subscriber.route.mapping
            assert mapping is not None  # only a start has none
            key = self._keys.of_lookup(
                subscriber.state_type, mapping, handling.message, handling.attributes
            )
            if key is None or turns.claim(key):
                plan.append((key, self._unit(subscriber, handling, key, queued=False)))
            else:
                job = self._unit(subscriber, handling, key, queued=True)
                waiting = WaitingRun(subscriber, handling, subscriber.name)
                turns.wait_behind(key, job, waiting)
        return plan

    def _unit(
        self, subscriber: Subscriber, handling: Handling, key: Hashable | None, *, queued: bool
    ) -> Job:
        work: Job
        if isinstance(subscriber, PlainSubscriber):
            work = functools.partial(self._run_plain, subscriber, handling)
        elif subscriber.route.starts_workflow:
            work = functools.partial(self._runner.start, subscriber, handling)
        else:
            work = functools.partial(self._runner.continue_workflows, subscriber, handling, key)
        return handling.unit(subscriber.name, work, completion=subscriber.name, queued=queued)

    async def _run_plain(self, subscriber: PlainSubscriber, handling: Handling) -> None:
        context = HandlingContext(
            self._sender,
            handling.attributes,
            workflow=None,
            handler=subscriber.name,
        )
        self._metrics.handler_runs += 1
        with (
            timed(self._logger, subscriber.name, handling.delivery.message.name),
            self._telemetry.handler_run(subscriber.name, None, None),
            context,
        ):
            await subscriber.handler(handling.message, handling.attributes)
        context.open = False
        await self._outbox.dispatch([self._encode(outgoing) for outgoing in context.outbox])

    async def _settle(self, handling: Handling) -> None:
        """Acknowledge, retry or dead-letter a delivery whose units are all over.

        It runs in the task of whichever unit ended last, within that unit's log fields:
        each unit names its message.
        """
        delivery, failures = handling.delivery, handling.failures
        message = delivery.message
        if not failures:
            await self._call(self._transport.complete(delivery), message, retried=False)
            return
        retryable = all(is_retryable(failure.error) for failure in failures)
        if not retryable or message.attempt >= self._policy.max_attempts:
            await self._dead_letter(delivery, failures, completed=handling.completed)
            return
        self._metrics.retries += 1
        delay = self._policy.delay(message.attempt)
        self._logger.debug(
            "%s failed on %s (attempt %d of %d), retrying in %.3f s: %s",
            ", ".join(failure.handler for failure in failures),
            message.name,
            message.attempt,
            self._policy.max_attempts,
            delay,
            failures[0].error,
        )
        again = message._replace(
            attempt=message.attempt + 1,
            completed_by=(*message.completed_by, *handling.completed),
        )
        handling.failures = []  # drop the exceptions, with their frames, now
        await self._call(self._transport.retry(delivery, again, delay), message, retried=True)

    async def _dead_letter(
        self, delivery: Delivery, failures: list[Failure], *, completed: tuple[str, ...] | list[str]
    ) -> None:
        message = delivery.message
        failure = next((f for f in failures if not is_retryable(f.error)), failures[-1])
        error = failure.error
        dead_letter = DeadLetter(
            message=message._replace(completed_by=(*message.completed_by, *completed)),
            error_type=f"{type(error).__module__}.{type(error).__qualname__}",
            error_text=str(error),
            traceback="".join(traceback.format_exception(error)),
            attempts=message.attempt,
            handler=", ".join(dict.fromkeys(f.handler for f in failures)),
        )
        self._metrics.dead_letters += 1
        self._logger.error(
            "%s failed on %s (message id %s) after %d attempt(s); dead-lettered: %s",
            dead_letter.handler,
            message.name,
            message.message_id,
            message.attempt,
            error_for_log(error, values=self._values_in_logs),
        )
        failures.clear()
        await self._call(self._transport.dead_letter(delivery, dead_letter), message, retried=False)

    async def _call(
        self, settling: Awaitable[None], message: TransportMessage, *, retried: bool
    ) -> None:
        try:
            await settling
        except Exception:
            self._logger.exception(
                "could not settle %s (message id %s) with the transport; it will be "
                "delivered again if the transport keeps unsettled messages",
                message.name,
                message.message_id,
            )
        finally:
            self._settled(message, retried)
