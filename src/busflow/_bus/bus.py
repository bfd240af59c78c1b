"""``Bus``: the facade that composes the parts, and ``BusConfiguration``, which builds it.

A message walks through the parts in this order: the transport delivers it to a worker here;
``dispatch`` decodes it (``routing``) and runs each subscriber's unit in its turn
(``ordering``); the ``runner`` looks up and saves workflow state through the persistence; the
handler's outgoing messages (``context``) are saved with the state and leave through the
transport after the save (``outbox``), delayed ones through the ``TimeoutStore``
(``timeouts``); ``dispatch`` settles the delivery: acknowledged, retried (``retries``) or
dead-lettered. ``metrics`` and ``telemetry`` count along the way and ``tracking`` knows when
all is done.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import inspect
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from busflow._bus.cache import StateCache
from busflow._bus.context import ContextualSender, Outgoing, current_context
from busflow._bus.dispatch import Dispatcher
from busflow._bus.ids import MessageIds
from busflow._bus.metrics import BusMetrics
from busflow._bus.ordering import Turns, WorkflowKeys
from busflow._bus.outbox import Dispatchable, Outbox
from busflow._bus.retries import RetryPolicy
from busflow._bus.routing import MessageHandler, RegisteredWorkflow, Routes
from busflow._bus.runner import WorkflowRunner
from busflow._bus.settings import BusSettings
from busflow._bus.telemetry import NoTelemetry, Telemetry, TelemetryFactory
from busflow._bus.timeouts import TimeoutPoller, TimeoutPolling, due_time
from busflow._bus.tracking import WorkTracker
from busflow._errors import BusError, BusIdleTimeoutError, BusNotRunningError, ConfigurationError
from busflow._logs import with_log_fields
from busflow._memory import InMemoryPersistence
from busflow._memory_transport import MemoryTransport
from busflow._messages import Message, MessageAttributes
from busflow._persistence import (
    CoreDependencies,
    Persistence,
    find_workflow,
    find_workflows,
    unique_running_fields,
)
from busflow._timeouts import ScheduledMessage, TimeoutStore
from busflow._transport import DeadLetter, Subscription, Transport, TransportMessage
from busflow._workflow import Workflow, WorkflowState

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = ["Bus", "BusConfiguration"]

M = TypeVar("M", bound=Message)
S = TypeVar("S", bound=WorkflowState)

CANCEL_GRACE = 0.5
"""Seconds ``dispose`` waits for handlers it cancelled, after the dispose timeout."""
CLOSE_GRACE = 1.0
"""Seconds ``dispose`` gives the transport and the persistence to close, together."""


_NO_ATTRIBUTES = MessageAttributes()


class _Lifecycle(enum.Enum):
    BUILT = "built"
    INITIALIZED = "initialized"
    STARTED = "started"
    DISPOSING = "disposing"
    DISPOSED = "disposed"


async def _initialize_workflows(
    persistence: Persistence, workflows: Sequence[RegisteredWorkflow]
) -> None:
    """``initialize_workflow`` for every state type at once.

    It waits for all of them, so none is still running when it returns or raises; then it
    raises the first failure (in the order the workflows were registered) as it was raised,
    with a note naming each other failure.
    """
    outcomes = await asyncio.gather(
        *(persistence.initialize_workflow(each.state_type, each.mappings) for each in workflows),
        return_exceptions=True,
    )
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if failures:
        first, *others = failures
        for other in others:
            first.add_note(f"another workflow failed to initialize too: {other!r}")
        raise first


class Bus:
    """An async message bus that runs workflows on a persistence and a transport.

    Build one with ``Bus.configure()``. ``initialize()`` prepares the persistence and the
    storage of every workflow; ``start()`` starts the transport and the workers; ``dispose()``
    stops them. ``async with bus:`` does all three. With the default ``MemoryTransport``
    messages live in this process's memory; workflow state lives on in the persistence.
    """

    def __init__(self, settings: BusSettings) -> None:
        self._settings = settings
        self._transport = settings.transport
        self.metrics = BusMetrics()
        self._telemetry: Telemetry = (
            NoTelemetry() if settings.telemetry is None else settings.telemetry(self.metrics)
        )
        self._logger_factory = with_log_fields(settings.core_dependencies.logger_factory)
        self._logger = self._logger_factory("busflow.bus")
        self._lifecycle = _Lifecycle.BUILT
        self._routes: Routes | None = None
        self._dispatcher: Dispatcher | None = None
        self._outbox: Outbox | None = None
        self._turns = Turns() if settings.per_workflow_order else None
        self._tracker = WorkTracker()
        self._ids = MessageIds()
        self._held: list[Outgoing] = []
        """Messages sent before ``start``; they leave when it starts the transport."""
        store = settings.persistence
        self._timeouts = (
            TimeoutPoller(
                store,
                self._deliver,
                settings.timeout_polling,
                self._logger,
                settings.values_in_logs,
            )
            if isinstance(store, TimeoutStore)
            else None
        )
        self._workers: list[asyncio.Task[None]] = []
        self._receiving: set[asyncio.Task[None]] = set()

    @staticmethod
    def configure() -> BusConfiguration:
        return BusConfiguration()

    @property
    def persistence(self) -> Persistence:
        return self._settings.persistence

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """The dead letters that the transport keeps in memory (``MemoryTransport``)."""
        kept = getattr(self.transport, "dead_letters", None)
        if kept is None:
            raise BusError(
                f"{type(self.transport).__name__} keeps dead letters outside this process; read "
                "them where it keeps them (for RabbitMQTransport: busflow.rabbitmq."
                "DeadLetterQueue, or `busflow dead-letters list --queue QUEUE`)"
            )
        return list(kept)

    # lifecycle

    async def initialize(self) -> None:
        """Check the workflows, and prepare the persistence and each workflow's storage.

        The persistence prepares every workflow's storage at once (``initialize_workflow``
        concurrently). If it fails, nothing is registered, and it may be called again.
        """
        if self._lifecycle is not _Lifecycle.BUILT:
            raise BusError(f"initialize() on a bus that is {self._lifecycle.value}")
        settings = self._settings
        routes = Routes(settings.workflows, settings.handlers)
        persistence = settings.persistence
        persistence.prepare(
            dataclasses.replace(settings.core_dependencies, logger_factory=self._logger_factory)
        )
        initialize = getattr(persistence, "initialize", None)
        if initialize is not None:
            await initialize()
        await _initialize_workflows(persistence, routes.workflows)
        sender = ContextualSender(self)
        for workflow in settings.workflows:
            workflow.bus = sender
        keys = WorkflowKeys()
        self._outbox = Outbox(
            deliver=self._deliver,
            schedule=self._schedule,
            persistence=persistence,
            logger=self._logger,
            values_in_logs=settings.values_in_logs,
        )
        runner = WorkflowRunner(
            persistence=persistence,
            sender=self,
            encode=self._encode,
            outbox=self._outbox,
            metrics=self.metrics,
            policy=settings.retry_policy,
            turns=self._turns,
            keys=keys,
            logger=self._logger,
            applied_limit=settings.applied_limit,
            values_in_logs=settings.values_in_logs,
            telemetry=self._telemetry,
            cache=StateCache(
                settings.state_cache_size,
                functools.partial(unique_running_fields, persistence),
            ),
            coalescing=settings.coalescing,
        )
        self._dispatcher = Dispatcher(
            routes=routes,
            runner=runner,
            transport=settings.transport,
            sender=self,
            encode=self._encode,
            outbox=self._outbox,
            turns=self._turns,
            keys=keys,
            policy=settings.retry_policy,
            metrics=self.metrics,
            logger=self._logger,
            values_in_logs=settings.values_in_logs,
            telemetry=self._telemetry,
            settled=self._settled,
        )
        self._routes = routes
        self._lifecycle = _Lifecycle.INITIALIZED
        self._logger.info(
            "bus initialized: %d workflow(s), %d handler(s), persistence %s, transport %s",
            len(settings.workflows),
            len(settings.handlers),
            type(persistence).__name__,
            type(settings.transport).__name__,
        )

    async def start(self) -> None:
        """Start the transport and the workers; ``initialize()`` first if it was not."""
        if self._lifecycle is _Lifecycle.BUILT:
            await self.initialize()
        if self._lifecycle is not _Lifecycle.INITIALIZED or self._routes is None:
            raise BusError(f"start() on a bus that is {self._lifecycle.value}")
        subscription = Subscription(self._routes.names, prefetch=self._settings.concurrency)
        await self.transport.start(subscription)
        self._lifecycle = _Lifecycle.STARTED
        held, self._held = self._held, []
        for outgoing in held:
            await self._send_now(outgoing)
        self._workers = [
            asyncio.create_task(self._work(), name=f"busflow-worker-{n}")
            for n in range(self._settings.concurrency)
        ]
        if self._timeouts is not None:
            self._timeouts.start()

    async def dispose(self) -> None:
        """Stop taking messages, let in-flight handlers finish, then close everything.

        Handlers still running after the dispose timeout are cancelled. ``dispose`` returns
        within the dispose timeout plus ``CANCEL_GRACE + CLOSE_GRACE`` (1.5 s), whatever
        handlers, the transport or the persistence do; what has not finished by then is
        logged and left behind. Deliveries not settled go back to the transport (the memory
        transport loses them, and logs how many).
        """
        if self._lifecycle in (_Lifecycle.DISPOSING, _Lifecycle.DISPOSED):
            return
        self._lifecycle = _Lifecycle.DISPOSING
        if self._timeouts is not None:
            await self._timeouts.stop()
        if self._turns is not None:
            self._turns.stopping = True
        for worker in self._receiving:
            worker.cancel()
        if self._workers:
            _, running = await asyncio.wait(self._workers, timeout=self._settings.dispose_timeout)
            if running:
                self._logger.warning(
                    "dispose: %d handler(s) still running after %.1f s were cancelled",
                    len(running),
                    self._settings.dispose_timeout,
                )
                for worker in running:
                    worker.cancel()
                _, stuck = await asyncio.wait(running, timeout=CANCEL_GRACE)
                if stuck:
                    self._logger.error(
                        "dispose: %d handler(s) ignored cancellation and were left running",
                        len(stuck),
                    )
        await self._close_resources()
        self._tracker.reset()
        self._lifecycle = _Lifecycle.DISPOSED

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self._close_resources()
            self._lifecycle = _Lifecycle.DISPOSED
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.dispose()

    async def _close_resources(self) -> None:
        outbox = self._outbox

        async def close_persistence() -> None:
            if outbox is not None:
                await outbox.close()  # its last clears need the persistence
            dispose = getattr(self.persistence, "dispose", None)
            if dispose is not None:
                await _call(dispose)

        closing = [
            asyncio.create_task(close(), name=f"busflow-close-{what}")
            for what, close in (
                ("transport", getattr(self.transport, "close", None)),
                ("persistence", close_persistence),
            )
            if close is not None
        ]
        if not closing:
            return
        done, stuck = await asyncio.wait(closing, timeout=CLOSE_GRACE)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                self._logger.error("dispose: %s failed: %r", task.get_name(), task.exception())
        for task in stuck:
            task.cancel()
            self._logger.error(
                "dispose: %s took longer than %.1f s and was left behind",
                task.get_name(),
                CLOSE_GRACE,
            )

    # sending

    async def send(
        self,
        message: Message,
        attributes: MessageAttributes | None = None,
        *,
        deliver_at: datetime | None = None,
        deliver_after: timedelta | None = None,
    ) -> None:
        """Send a command. Inside a handler it leaves once the handler's state is saved.

        With ``deliver_at`` (timezone-aware) or ``deliver_after`` it is delivered then,
        stored meanwhile by the persistence, which must be a ``TimeoutStore``.
        """
        await self._dispatch(message, attributes, False, due_time(deliver_at, deliver_after))

    async def publish(
        self,
        message: Message,
        attributes: MessageAttributes | None = None,
        *,
        deliver_at: datetime | None = None,
        deliver_after: timedelta | None = None,
    ) -> None:
        """Publish an event; like ``send``, it may be delayed."""
        await self._dispatch(message, attributes, True, due_time(deliver_at, deliver_after))

    async def wait_until_idle(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Return once nothing this bus sent to itself is queued, waiting or being handled.

        Raises ``BusIdleTimeoutError`` (a ``TimeoutError``) if that has not happened within
        ``timeout`` seconds. On a disposed bus it returns at once.
        """
        if current_context() is not None:
            raise BusError("wait_until_idle() inside a handler would wait for that handler")
        if self._held and self._lifecycle in (_Lifecycle.BUILT, _Lifecycle.INITIALIZED):
            raise BusError(
                f"wait_until_idle() with {len(self._held)} message(s) queued on a bus that is "
                f"{self._lifecycle.value}; start() it first"
            )
        try:
            await asyncio.wait_for(self._tracker.wait(), timeout)
        except TimeoutError:
            raise BusIdleTimeoutError(
                f"the bus was still busy after {timeout} s: {self._tracker.expected} "
                f"message(s) queued or waiting for a retry, {self._tracker.in_hand} being "
                "handled"
            ) from None

    async def _dispatch(
        self,
        message: Message,
        attributes: MessageAttributes | None,
        publish: bool,
        due_at: datetime | None,
    ) -> None:
        if not isinstance(message, Message):
            raise TypeError(f"only busflow Message instances can be sent, not {message!r}")
        if due_at is not None and self._timeouts is None:
            raise ConfigurationError(
                f"cannot delay {type(message).__name__}: {type(self.persistence).__name__} "
                "stores no messages for later (it is not a TimeoutStore); use MongoPersistence "
                "or InMemoryPersistence"
            )
        context = current_context()
        if context is not None and context.bus is self:
            outgoing = context.outgoing(message, attributes, publish=publish, due_at=due_at)
            if context.open:
                context.outbox.append(outgoing)
            else:
                await self._send_now(outgoing)
            return
        if self._lifecycle in (_Lifecycle.DISPOSING, _Lifecycle.DISPOSED):
            raise BusNotRunningError(
                f"cannot send {type(message).__name__}: the bus is {self._lifecycle.value}"
            )
        attributes = attributes or _NO_ATTRIBUTES
        message_id = attributes.message_id or self._ids.next()
        if self._lifecycle is not _Lifecycle.STARTED:
            self._held.append(Outgoing(message, attributes, message_id, publish, due_at))
            return
        if due_at is not None:
            await self._send_now(Outgoing(message, attributes, message_id, publish, due_at))
            return
        await self._deliver(self._encoded(message, attributes, message_id), publish=publish)

    async def _send_now(self, outgoing: Outgoing) -> None:
        dispatchable = self._encode(outgoing)
        if dispatchable.due_at is not None:
            await self._schedule([dispatchable], None)
        else:
            await self._deliver(dispatchable.message, publish=dispatchable.publish)

    def _encode(self, outgoing: Outgoing) -> Dispatchable:
        message = self._encoded(outgoing.message, outgoing.attributes, outgoing.message_id)
        return Dispatchable(message, outgoing.publish, outgoing.due_at)

    def _encoded(
        self, message: Message, attributes: MessageAttributes, message_id: str
    ) -> TransportMessage:
        """``message`` as it travels, carrying the current trace context."""
        assert self._routes is not None
        return self._telemetry.carry(self._routes.encode(message, attributes, message_id))

    async def _schedule(
        self, messages: Sequence[Dispatchable], sender: WorkflowState | None
    ) -> None:
        """Store delayed messages until they are due."""
        store = self.persistence
        assert isinstance(store, TimeoutStore)
        assert self._timeouts is not None
        scheduled = [
            ScheduledMessage(
                message=each.message,
                publish=each.publish,
                due_at=each.due_at,
                workflow_name=None if sender is None else sender.workflow_name,
                workflow_id=None if sender is None else sender.workflow_id,
            )
            for each in messages
            if each.due_at is not None
        ]
        await store.schedule_messages(scheduled)
        for each in scheduled:
            self._timeouts.scheduled(each.due_at)

    async def _deliver(self, message: TransportMessage, *, publish: bool) -> None:
        """Hand an encoded message to the transport, expecting it back if handled here."""
        assert self._routes is not None
        expected = message.name in self._routes.names
        if expected:
            self._tracker.expect(message.message_id)
        try:
            if publish:
                await self._transport.publish(message)
            else:
                await self._transport.send(message)
        except BaseException:
            if expected:
                self._tracker.forget(message.message_id)
            raise

    # reading

    async def find_workflow(self, state_type: type[S], workflow_id: str) -> S | None:
        """The state of ``state_type`` with ``workflow_id``, completed or not; ``None`` if
        there is none. Reads the persistence, whatever it is, with no message or mapping."""
        return await find_workflow(self.persistence, state_type, workflow_id)

    async def find_workflows(
        self,
        state_type: type[S],
        field_name: str,
        value: object,
        *,
        include_completed: bool = True,
    ) -> list[S]:
        """The states of ``state_type`` whose ``field_name`` equals ``value``; completed ones
        too unless ``include_completed=False``. A field the state lacks raises
        ``ConfigurationError``; a value that is not a scalar, ``InvalidLookupValueError``."""
        return await find_workflows(
            self.persistence, state_type, field_name, value, include_completed=include_completed
        )

    # receiving

    async def _work(self) -> None:
        worker = asyncio.current_task()
        assert worker is not None
        assert self._dispatcher is not None
        while self._lifecycle is _Lifecycle.STARTED:
            self._receiving.add(worker)
            try:
                delivery = await self._transport.receive()
            except Exception:
                self._logger.exception("the transport failed to deliver; trying again")
                await asyncio.sleep(0.1)
                continue
            finally:
                self._receiving.discard(worker)
            self._tracker.received(delivery.message.message_id)
            try:
                await self._dispatcher.handle(delivery)
            except Exception:  # a bug in the bus itself; keep the worker alive
                self._logger.exception("unexpected error handling %s", delivery.message.name)

    def _settled(self, message: TransportMessage, retried: bool) -> None:
        self._tracker.settled(message.message_id, retried=retried)


async def _call(close: Callable[[], Awaitable[None] | None]) -> None:
    result = close()
    if inspect.isawaitable(result):
        await result


class BusConfiguration:
    """Builds a ``Bus``: ``Bus.configure().with_workflow(W).build()``."""

    def __init__(self) -> None:
        self._persistence: Persistence | None = None
        self._transport: Transport | None = None
        self._workflows: list[Workflow[Any]] = []
        self._handlers: list[tuple[type[Message], MessageHandler]] = []
        self._concurrency = 1
        self._retry_policy = RetryPolicy()
        self._core_dependencies = CoreDependencies()
        self._dispose_timeout = 10.0
        self._per_workflow_order = True
        self._applied_limit = 100
        self._timeout_polling = TimeoutPolling()
        self._values_in_logs = False
        self._telemetry: TelemetryFactory | None = None
        self._state_cache_size = 1_000
        self._coalescing = True

    def with_persistence(self, persistence: Persistence) -> Self:
        if not isinstance(persistence, Persistence):
            raise ConfigurationError(
                f"{type(persistence).__name__} does not implement the Persistence protocol "
                "(prepare, initialize_workflow, get_workflow_state, save_workflow_state)"
            )
        self._persistence = persistence
        return self

    def with_transport(self, transport: Transport) -> Self:
        """Carry messages on ``transport`` (default: a new ``MemoryTransport``)."""
        if not isinstance(transport, Transport):
            raise ConfigurationError(
                f"{type(transport).__name__} does not implement the Transport protocol "
                "(start, close, send, publish, receive, complete, retry, dead_letter)"
            )
        self._transport = transport
        return self

    def with_workflow(self, workflow: type[Workflow[Any]] | Workflow[Any]) -> Self:
        """Register a workflow class (instantiated with no arguments) or instance."""
        instance = workflow() if isinstance(workflow, type) else workflow
        if not isinstance(instance, Workflow):
            raise ConfigurationError(f"{workflow!r} is not a Workflow")
        self._workflows.append(instance)
        return self

    def with_handler(self, message_type: type[M], handler: MessageHandler) -> Self:
        """Register ``async def handler(message, attributes)`` for a message type."""
        if not _is_async(handler):
            raise ConfigurationError(f"handler {handler!r} must be an async function")
        self._handlers.append((message_type, handler))
        return self

    def with_concurrency(self, concurrency: int) -> Self:
        """How many messages are handled at once (default 1)."""
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, not {concurrency}")
        self._concurrency = concurrency
        return self

    def with_retry_policy(self, policy: RetryPolicy) -> Self:
        self._retry_policy = policy
        return self

    def with_core_dependencies(self, core_dependencies: CoreDependencies) -> Self:
        """Use another logger factory for the bus and its persistence."""
        self._core_dependencies = core_dependencies
        return self

    def with_dispose_timeout(self, seconds: float) -> Self:
        """How long ``dispose`` waits for in-flight handlers (default 10 s)."""
        if seconds < 0:
            raise ConfigurationError(f"the dispose timeout must not be negative, not {seconds}")
        self._dispose_timeout = seconds
        return self

    def with_per_workflow_order(self, enabled: bool) -> Self:
        """Whether messages for one workflow instance run one at a time (default on).

        On, messages that reach the same workflow instance are handled one after another,
        in arrival order, whichever mapping finds it, so within one bus they never race each
        other into version conflicts; messages for other workflows keep full concurrency.
        Optimistic concurrency still guards against other processes. Off, they race and
        conflicts are re-run.
        """
        self._per_workflow_order = enabled
        return self

    def with_applied_message_limit(self, limit: int) -> Self:
        """How many applied message ids each workflow keeps (default 100).

        A message redelivered after its workflow applied ``limit`` later messages is applied
        again. Each id costs about 45 bytes in the workflow's document.
        """
        if limit < 1:
            raise ConfigurationError(f"the applied message limit must be >= 1, not {limit}")
        self._applied_limit = limit
        return self

    def with_timeout_polling(
        self,
        *,
        interval: float = 1.0,
        max_interval: float = 5.0,
        lease: timedelta = timedelta(seconds=30),
        batch: int = 100,
    ) -> Self:
        """How this bus polls for due delayed messages (see ``TimeoutPolling``)."""
        self._timeout_polling = TimeoutPolling(interval, max_interval, lease, batch)
        return self

    def with_state_cache(self, size: int) -> Self:
        """How many workflows' last saved states to keep for their next message (default
        1,000; 0 keeps none).

        A message for a workflow whose state is kept skips the read: its lookup must name
        one workflow, by ``workflow_id`` or by a field the persistence keeps unique among
        running workflows (``with_workflow_options(unique_running=...)``). The save that
        follows still checks the version, so a state another process moved on since is read
        again and the handler runs again on it. Only a persistence whose save returns the
        stored state fills it (``MongoPersistence`` does; ``InMemoryPersistence`` needs no
        cache).
        """
        if size < 0:
            raise ConfigurationError(f"the state cache size must not be negative, not {size}")
        self._state_cache_size = size
        return self

    def with_coalescing(self, enabled: bool) -> Self:
        """Whether messages already waiting for one workflow run in one batch (default on).

        On, the worker holding a workflow's turn runs the messages queued behind it, while
        each is sure to reach that workflow (found by ``workflow_id`` or a
        ``unique_running`` field), on the state in memory, and saves once: one write for
        the batch, with every message recorded as applied and everything they sent in its
        outbox. It never waits for messages to arrive. Any failure undoes the batch and each
        message runs on its own. Needs per-workflow order.
        """
        self._coalescing = enabled
        return self

    def with_values_in_logs(self, enabled: bool = True) -> Self:
        """Let log lines at INFO and above show values of states and messages (default off).

        Off, those lines name fields, types and ids but never a value: not a lookup's value,
        nor the text of an error that may quote one (a pydantic validation error is shown
        without its input). DEBUG lines may show values either way.
        """
        self._values_in_logs = enabled
        return self

    def with_opentelemetry(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> Self:
        """Report to OpenTelemetry (``pip install "busflow[otel]"``): the global providers
        unless given others.

        A span for each delivery, continuing the trace its message carries, and a child span
        for each handler run with the workflow's name and id; every message the bus sends
        carries the trace context (``traceparent``) in its attributes, so a saga's messages
        form one trace across processes. ``BusMetrics`` as observable counters, and a
        histogram of handler durations (``busflow.handler.duration``, in ms).
        """
        try:
            from busflow._bus.otel import OpenTelemetry
        except ImportError:
            raise ConfigurationError(
                'with_opentelemetry() needs OpenTelemetry: pip install "busflow[otel]"'
            ) from None
        self._telemetry = functools.partial(
            OpenTelemetry, tracer_provider=tracer_provider, meter_provider=meter_provider
        )
        return self

    def build(self) -> Bus:
        return Bus(
            BusSettings(
                persistence=self._persistence or InMemoryPersistence(),
                transport=self._transport or MemoryTransport(),
                workflows=tuple(self._workflows),
                handlers=tuple(self._handlers),
                concurrency=self._concurrency,
                retry_policy=self._retry_policy,
                core_dependencies=self._core_dependencies,
                dispose_timeout=self._dispose_timeout,
                per_workflow_order=self._per_workflow_order,
                applied_limit=self._applied_limit,
                timeout_polling=self._timeout_polling,
                values_in_logs=self._values_in_logs,
                telemetry=self._telemetry,
                state_cache_size=self._state_cache_size,
                coalescing=self._coalescing,
            )
        )


def _is_async(handler: object) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - an object with an async __call__
    )
