"""The in-process message bus that runs workflows and plain handlers."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import enum
import functools
import inspect
import random
import uuid
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Self, TypeAlias, TypeVar

from busflow._errors import (
    BusError,
    BusIdleTimeoutError,
    BusNotRunningError,
    ConfigurationError,
    InvalidLookupValueError,
    InvalidStateValueError,
    StoredStateError,
    WorkflowConcurrencyError,
    WorkflowUniquenessError,
)
from busflow._memory import InMemoryPersistence
from busflow._messages import Message, MessageAttributes
from busflow._persistence import CoreDependencies, Persistence
from busflow._workflow import (
    MessageWorkflowMapping,
    Workflow,
    WorkflowMapper,
    WorkflowRoute,
    WorkflowState,
    WorkflowStatus,
)

__all__ = ["Bus", "BusConfiguration", "BusMetrics", "DeadLetter", "RetryPolicy"]

S = TypeVar("S", bound=WorkflowState)
M = TypeVar("M", bound=Message)

MessageHandler: TypeAlias = Callable[[Any, MessageAttributes], Awaitable[None]]
"""A plain handler: ``async def handler(message, attributes)``."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failing handler runs again, and how long it waits in between.

    Attempt ``n`` (from 1) that fails waits ``min(max_delay, base_delay * 2 ** (n - 1))``,
    scaled by a random factor between 0.5 and 1.5, before the next. The defaults give up
    after 10 attempts and about two seconds.
    """

    max_attempts: int = 10
    base_delay: float = 0.005
    max_delay: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(
                f"RetryPolicy.max_attempts must be >= 1, not {self.max_attempts}"
            )
        if self.base_delay < 0 or self.max_delay < 0:
            raise ConfigurationError("RetryPolicy delays must not be negative")

    def delay(self, attempt: int) -> float:
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return ceiling * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not security


@dataclass(frozen=True)
class DeadLetter:
    """A message that a handler could not handle, after every attempt."""

    message: Message
    attributes: MessageAttributes
    error: BaseException
    attempts: int
    handler: str
    """Which handler failed: ``"WorkflowClass.method"`` or the plain handler's name."""


@dataclass
class BusMetrics:
    """Counters since the bus was built; read them to see how the bus is doing."""

    messages_delivered: int = 0
    """Messages taken off the queue and handed to their handlers."""
    handler_runs: int = 0
    """Handler invocations, retries included."""
    conflicts: int = 0
    """Saves that raised ``WorkflowConcurrencyError`` (each one causes a retry)."""
    retries: int = 0
    """Handler units run again after any failure."""
    dead_letters: int = 0
    unmatched: int = 0
    """Messages for a workflow that found no running state and were ignored."""
    duplicate_starts: int = 0
    """Starts refused by a uniqueness rule (``unique_running``) and ignored."""


@dataclass
class _Outgoing:
    message: Message
    attributes: MessageAttributes


@dataclass
class _HandlingContext:
    """What one handler run collects: the messages it sends, held until it has saved."""

    bus: Bus
    incoming: MessageAttributes
    workflow_id: str | None
    outbox: list[_Outgoing] = field(default_factory=list)
    open: bool = True

    def outgoing_attributes(self, given: MessageAttributes | None) -> MessageAttributes:
        given = given or MessageAttributes()
        sticky = dict(self.incoming.sticky_attributes)
        if self.workflow_id is not None:
            sticky["workflow_id"] = self.workflow_id
        sticky.update(given.sticky_attributes)
        return MessageAttributes(
            correlation_id=given.correlation_id or self.incoming.correlation_id,
            attributes=dict(given.attributes),
            sticky_attributes=sticky,
        )


_handling: contextvars.ContextVar[_HandlingContext | None] = contextvars.ContextVar(
    "busflow_handling", default=None
)


@dataclass(eq=False)
class _Envelope:
    message: Message
    attributes: MessageAttributes
    pending: int = 1
    """Units of handling still owed: the delivery itself, plus any that wait their turn."""


@dataclass(frozen=True)
class _PlainSubscriber:
    handler: MessageHandler

    @property
    def name(self) -> str:
        return getattr(self.handler, "__qualname__", repr(self.handler))


@dataclass(frozen=True)
class _WorkflowSubscriber(Generic[S]):
    workflow: Workflow[S]
    state_type: type[S]
    route: WorkflowRoute[S]

    @property
    def name(self) -> str:
        handler_name = getattr(self.route.handler, "__name__", repr(self.route.handler))
        return f"{type(self.workflow).__name__}.{handler_name}"


_Subscriber: TypeAlias = _PlainSubscriber | _WorkflowSubscriber[Any]


class _Lifecycle(enum.Enum):
    BUILT = "built"
    INITIALIZED = "initialized"
    STARTED = "started"
    DISPOSING = "disposing"
    DISPOSED = "disposed"


class _NothingToDoError(Exception):
    """A unit found nothing to do (a workflow no longer running, a duplicate start)."""


_NOT_RETRIED = (
    ConfigurationError,
    InvalidLookupValueError,
    InvalidStateValueError,
    StoredStateError,
    WorkflowUniquenessError,
)
"""Failures that the same message would meet again: dead-lettered at once, not retried."""

_Unit: TypeAlias = Callable[[], Awaitable[Any]]


def _being_cancelled() -> bool:
    """Whether the running task itself is being cancelled (not just an await inside it)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _safe_lookup(mapping: MessageWorkflowMapping[Any, Any], envelope: _Envelope) -> object:
    try:
        return mapping.lookup(envelope.message, envelope.attributes)
    except Exception as error:
        return f"<lookup failed: {error!r}>"


class BusConfiguration:
    """Builds a ``Bus``: ``Bus.configure().with_workflow(W).build()``."""

    def __init__(self) -> None:
        self._persistence: Persistence | None = None
        self._workflows: list[Workflow[Any]] = []
        self._handlers: list[tuple[type[Message], MessageHandler]] = []
        self._concurrency = 1
        self._retry_policy = RetryPolicy()
        self._core_dependencies = CoreDependencies()
        self._dispose_timeout = 10.0
        self._per_workflow_order = True

    def with_persistence(self, persistence: Persistence) -> Self:
        if not isinstance(persistence, Persistence):
            raise ConfigurationError(
                f"{type(persistence).__name__} does not implement the Persistence protocol "
                "(prepare, initialize_workflow, get_workflow_state, save_workflow_state)"
            )
        self._persistence = persistence
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
        """Whether messages that look up the same workflow run one at a time (default on).

        On, messages that a mapping resolves to the same lookup value are handled one after
        another, in arrival order, so they never race each other into version conflicts and
        retries; messages for other workflows keep full concurrency. Optimistic concurrency
        still guards against other processes. Off, they race and conflicts are retried.
        """
        self._per_workflow_order = enabled
        return self

    def build(self) -> Bus:
        return Bus(
            persistence=self._persistence or InMemoryPersistence(),
            workflows=list(self._workflows),
            handlers=list(self._handlers),
            concurrency=self._concurrency,
            retry_policy=self._retry_policy,
            core_dependencies=self._core_dependencies,
            dispose_timeout=self._dispose_timeout,
            per_workflow_order=self._per_workflow_order,
        )


class Bus:
    """An in-process async message bus that runs workflows on a persistence.

    Build one with ``Bus.configure()``. ``initialize()`` prepares the persistence and the
    storage of every workflow; ``start()`` starts the workers; ``dispose()`` stops them.
    ``async with bus:`` does all three. Messages travel on an in-memory queue: they are lost
    if the process ends, while workflow state lives on in the persistence.
    """

    def __init__(
        self,
        *,
        persistence: Persistence,
        workflows: list[Workflow[Any]],
        handlers: list[tuple[type[Message], MessageHandler]],
        concurrency: int,
        retry_policy: RetryPolicy,
        core_dependencies: CoreDependencies,
        dispose_timeout: float,
        per_workflow_order: bool = True,
    ) -> None:
        self.persistence = persistence
        self.metrics = BusMetrics()
        self.dead_letters: list[DeadLetter] = []
        self._workflows = workflows
        self._handlers = handlers
        self._concurrency = concurrency
        self._retry_policy = retry_policy
        self._core_dependencies = core_dependencies
        self._dispose_timeout = dispose_timeout
        self._logger = core_dependencies.logger_factory("busflow.bus")
        self._subscribers: dict[type[Message], list[_Subscriber]] = {}
        self._routes_by_type: dict[type[Message], list[_Subscriber]] = {}
        self._queue: asyncio.Queue[_Envelope] = asyncio.Queue()
        self._unfinished = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._workers: list[asyncio.Task[None]] = []
        self._waiting_workers: set[asyncio.Task[None]] = set()
        self._per_workflow_order = per_workflow_order
        self._busy_keys: dict[
            Hashable, collections.deque[tuple[Callable[[], Awaitable[None]], _Envelope]]
        ] = {}
        self._lifecycle = _Lifecycle.BUILT

    @staticmethod
    def configure() -> BusConfiguration:
        return BusConfiguration()

    # lifecycle

    async def initialize(self) -> None:
        """Prepare the persistence and the storage of every registered workflow."""
        if self._lifecycle is not _Lifecycle.BUILT:
            raise BusError(f"initialize() on a bus that is {self._lifecycle.value}")
        subscribers: list[tuple[type[Message], _Subscriber]] = [
            (message_type, _PlainSubscriber(handler)) for message_type, handler in self._handlers
        ]
        registered: list[tuple[type[WorkflowState], list[MessageWorkflowMapping[Any, Any]]]] = []
        for workflow in self._workflows:
            mapper: WorkflowMapper[Any] = WorkflowMapper(type(workflow).__name__)
            workflow.configure_workflow(mapper)
            mapper.validate()
            workflow.bus = self
            registered.append((mapper.state_type, mapper.mappings))
            subscribers.extend(
                (route.message_type, _WorkflowSubscriber(workflow, mapper.state_type, route))
                for route in mapper.routes
            )
        self._check_state_names([state_type for state_type, _ in registered])
        for message_type, subscriber in subscribers:
            self._subscribers.setdefault(message_type, []).append(subscriber)

        self.persistence.prepare(self._core_dependencies)
        initialize = getattr(self.persistence, "initialize", None)
        if initialize is not None:
            await initialize()
        for state_type, mappings in registered:
            await self.persistence.initialize_workflow(state_type, mappings)
        self._lifecycle = _Lifecycle.INITIALIZED
        self._logger.info(
            "bus initialized: %d workflow(s), %d handler(s), persistence %s",
            len(self._workflows),
            len(self._handlers),
            type(self.persistence).__name__,
        )

    async def start(self) -> None:
        """Start handling messages; ``initialize()`` is called first if it was not."""
        if self._lifecycle is _Lifecycle.BUILT:
            await self.initialize()
        if self._lifecycle is not _Lifecycle.INITIALIZED:
            raise BusError(f"start() on a bus that is {self._lifecycle.value}")
        self._workers = [
            asyncio.create_task(self._work(), name=f"busflow-worker-{n}")
            for n in range(self._concurrency)
        ]
        self._lifecycle = _Lifecycle.STARTED

    async def dispose(self) -> None:
        """Stop taking messages, let in-flight handlers finish, then dispose the persistence.

        Handlers still running after the dispose timeout are cancelled. Messages still
        queued are lost with the in-memory transport: their count is logged as a warning.
        """
        if self._lifecycle in (_Lifecycle.DISPOSING, _Lifecycle.DISPOSED):
            return
        self._lifecycle = _Lifecycle.DISPOSING
        for worker in self._waiting_workers:
            worker.cancel()
        if self._workers:
            _, still_running = await asyncio.wait(self._workers, timeout=self._dispose_timeout)
            if still_running:
                self._logger.warning(
                    "dispose: %d handler(s) still running after %.1f s were cancelled",
                    len(still_running),
                    self._dispose_timeout,
                )
                for worker in still_running:
                    worker.cancel()
                await asyncio.wait(still_running)
        if not self._queue.empty():
            self._logger.warning(
                "dispose: %d queued message(s) were not handled and are lost "
                "(the in-memory transport does not keep them)",
                self._queue.qsize(),
            )
            while not self._queue.empty():
                self._settle(self._queue.get_nowait())
        dispose = getattr(self.persistence, "dispose", None)
        if dispose is not None:
            await dispose()
        self._lifecycle = _Lifecycle.DISPOSED

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.dispose()

    # sending

    async def send(self, message: Message, attributes: MessageAttributes | None = None) -> None:
        """Send a command. Inside a handler it leaves once the handler's state is saved."""
        self._dispatch(message, attributes)

    async def publish(self, message: Message, attributes: MessageAttributes | None = None) -> None:
        """Publish an event. Inside a handler it leaves once the handler's state is saved."""
        self._dispatch(message, attributes)

    async def wait_until_idle(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Return once no message is queued or being handled.

        Raises ``BusIdleTimeoutError`` (a ``TimeoutError``) if that has not happened within
        ``timeout`` seconds.
        """
        if _handling.get() is not None:
            raise BusError("wait_until_idle() inside a handler would wait for that handler")
        if self._unfinished and self._lifecycle in (_Lifecycle.BUILT, _Lifecycle.INITIALIZED):
            raise BusError(
                f"wait_until_idle() with {self._unfinished} message(s) queued on a bus that is "
                f"{self._lifecycle.value}; start() it first"
            )
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            raise BusIdleTimeoutError(
                f"the bus was still busy after {timeout} s: {self._queue.qsize()} message(s) "
                f"queued, {self._unfinished - self._queue.qsize()} being handled"
            ) from None

    def _dispatch(self, message: Message, attributes: MessageAttributes | None) -> None:
        if not isinstance(message, Message):
            raise TypeError(f"only busflow Message instances can be sent, not {message!r}")
        context = _handling.get()
        if context is not None and context.bus is self:
            outgoing = _Outgoing(message, context.outgoing_attributes(attributes))
            if context.open:
                context.outbox.append(outgoing)
            else:
                self._enqueue(outgoing.message, outgoing.attributes)
            return
        if self._lifecycle in (_Lifecycle.DISPOSING, _Lifecycle.DISPOSED):
            raise BusNotRunningError(
                f"cannot send {type(message).__name__}: the bus is {self._lifecycle.value}"
            )
        self._enqueue(message, attributes or MessageAttributes())

    def _enqueue(self, message: Message, attributes: MessageAttributes) -> None:
        self._unfinished += 1
        self._idle.clear()
        self._queue.put_nowait(_Envelope(message, attributes))

    # handling

    async def _work(self) -> None:
        worker = asyncio.current_task()
        assert worker is not None
        while self._lifecycle is _Lifecycle.STARTED:
            self._waiting_workers.add(worker)
            try:
                envelope = await self._queue.get()
            finally:
                self._waiting_workers.discard(worker)
            try:
                await self._deliver(envelope)
            except Exception:  # a bug in the bus itself; keep the worker alive
                self._logger.exception("unexpected error delivering %r", envelope.message)
            finally:
                self._settle(envelope)

    def _settle(self, envelope: _Envelope) -> None:
        """One unit of an envelope's handling is over; the envelope is done when all are."""
        envelope.pending -= 1
        if envelope.pending == 0:
            self._unfinished -= 1
            if self._unfinished == 0:
                self._idle.set()

    def _subscribers_for(self, message_type: type[Message]) -> list[_Subscriber]:
        found = self._routes_by_type.get(message_type)
        if found is None:
            found = [
                subscriber
                for base in message_type.__mro__
                for subscriber in self._subscribers.get(base, [])
            ]
            self._routes_by_type[message_type] = found
        return found

    async def _deliver(self, envelope: _Envelope) -> None:
        self.metrics.messages_delivered += 1
        subscribers = self._subscribers_for(type(envelope.message))
        if not subscribers:
            self._logger.warning(
                "no handler for %s; the message was ignored", type(envelope.message).__name__
            )
            return
        # Claim each workflow's turn before any handler runs, so that arrival order holds
        # even while an earlier subscriber of this message awaits.
        plan: list[tuple[_Unit, Hashable | None]] = []
        for subscriber in subscribers:
            unit = self._unit_for(subscriber, envelope)
            key = self._ordering_key(subscriber, envelope)
            if key is not None and key in self._busy_keys:
                envelope.pending += 1
                self._busy_keys[key].append((unit, envelope))
                continue
            if key is not None:
                self._busy_keys[key] = collections.deque()
            plan.append((unit, key))
        for unit, key in plan:
            if key is None:
                await self._run_unit(unit, envelope)
            else:
                await self._run_in_turn(key, unit, envelope)

    def _unit_for(self, subscriber: _Subscriber, envelope: _Envelope) -> _Unit:
        """One subscriber's handling of one message, retries included."""
        if isinstance(subscriber, _PlainSubscriber):
            run: _Unit = functools.partial(self._run_plain, subscriber, envelope)
        elif subscriber.route.starts_workflow:
            run = functools.partial(self._start_workflow, subscriber, envelope)
        else:
            return functools.partial(self._continue_workflows, subscriber, envelope)
        return functools.partial(self._with_retries, envelope, subscriber.name, run)

    def _ordering_key(self, subscriber: _Subscriber, envelope: _Envelope) -> Hashable | None:
        """What a message looks up: messages with the same key reach the same workflows."""
        if not self._per_workflow_order or isinstance(subscriber, _PlainSubscriber):
            return None
        mapping = subscriber.route.mapping
        if mapping is None:
            return None
        try:
            value = mapping.lookup(envelope.message, envelope.attributes)
            hash(value)
        except Exception:  # the persistence reports a broken lookup; no ordering for it
            return None
        return None if value is None else (subscriber.state_type, mapping.maps_to, value)

    async def _run_in_turn(self, key: Hashable, unit: _Unit, envelope: _Envelope) -> None:
        """Run ``unit``, whose key this delivery claimed, then the units that queued behind it.

        A worker that finds a key busy leaves its unit with the worker that holds the key and
        moves on, so messages for one workflow run one at a time, in arrival order, while
        messages for other workflows keep every worker busy.
        """
        waiting = self._busy_keys[key]
        try:
            await self._run_unit(unit, envelope)
            while waiting:
                next_unit, next_envelope = waiting.popleft()
                try:
                    await self._run_unit(next_unit, next_envelope)
                finally:
                    self._settle(next_envelope)
        finally:
            del self._busy_keys[key]
            if waiting:  # cancelled by dispose()
                self._logger.warning(
                    "dispose: %d message(s) waiting for a busy workflow were not handled",
                    len(waiting),
                )
                for _, next_envelope in waiting:
                    self._settle(next_envelope)

    async def _run_unit(self, unit: _Unit, envelope: _Envelope) -> None:
        try:
            await unit()
        except Exception:  # a bug in the bus itself; the other subscribers still get the message
            self._logger.exception("unexpected error handling %r", envelope.message)

    async def _with_retries(self, envelope: _Envelope, handler_name: str, unit: _Unit) -> bool:
        """Run one unit of handling until it succeeds or runs out of attempts.

        Returns whether it succeeded; a unit that failed for good is dead-lettered.
        """
        policy = self._retry_policy
        for attempt in range(1, policy.max_attempts + 1):
            try:
                await unit()
                return True
            except _NothingToDoError:
                return True
            except (Exception, asyncio.CancelledError) as error:
                if isinstance(error, asyncio.CancelledError) and _being_cancelled():
                    raise  # the bus is stopping this worker
                if isinstance(error, WorkflowConcurrencyError):
                    self.metrics.conflicts += 1
                if attempt == policy.max_attempts or isinstance(error, _NOT_RETRIED):
                    self._dead_letter(envelope, handler_name, error, attempt)
                    return False
                self.metrics.retries += 1
                self._logger.debug(
                    "%s failed on %s (attempt %d of %d), retrying: %s",
                    handler_name,
                    type(envelope.message).__name__,
                    attempt,
                    policy.max_attempts,
                    error,
                )
                await asyncio.sleep(policy.delay(attempt))
        return False

    def _dead_letter(
        self, envelope: _Envelope, handler_name: str, error: BaseException, attempts: int
    ) -> None:
        self.metrics.dead_letters += 1
        self.dead_letters.append(
            DeadLetter(envelope.message, envelope.attributes, error, attempts, handler_name)
        )
        self._logger.error(
            "%s failed on %s after %d attempt(s); kept in bus.dead_letters: %r",
            handler_name,
            type(envelope.message).__name__,
            attempts,
            error,
            exc_info=error,
        )

    async def _run_plain(self, subscriber: _PlainSubscriber, envelope: _Envelope) -> None:
        context = _HandlingContext(self, envelope.attributes, workflow_id=None)
        self.metrics.handler_runs += 1
        await self._in_context(context, subscriber.handler(envelope.message, envelope.attributes))
        self._flush(context)

    async def _start_workflow(
        self, subscriber: _WorkflowSubscriber[Any], envelope: _Envelope
    ) -> None:
        state = subscriber.state_type.model_validate({"workflow_id": str(uuid.uuid4())})
        try:
            await self._run_workflow_handler(subscriber, envelope, state, always_save=True)
        except WorkflowUniquenessError as error:
            self.metrics.duplicate_starts += 1
            self._logger.warning("%s: duplicate start ignored: %s", subscriber.name, error)
            raise _NothingToDoError from error

    async def _continue_workflows(
        self, subscriber: _WorkflowSubscriber[Any], envelope: _Envelope
    ) -> None:
        mapping = subscriber.route.mapping
        assert mapping is not None
        states: list[WorkflowState] = []

        async def look_up() -> None:
            states[:] = await self.persistence.get_workflow_state(
                subscriber.state_type, mapping, envelope.message, envelope.attributes
            )

        if not await self._with_retries(envelope, subscriber.name, look_up):
            return
        if not states:
            self.metrics.unmatched += 1
            self._logger.info(
                "%s: no running %s matches %s=%r; the message was ignored",
                subscriber.name,
                subscriber.state_type.workflow_name,
                mapping.maps_to,
                _safe_lookup(mapping, envelope),
            )
            return
        for state in states:
            await self._with_retries(
                envelope,
                subscriber.name,
                _Retryable(self, subscriber, envelope, state).run,
            )

    async def _run_workflow_handler(
        self,
        subscriber: _WorkflowSubscriber[Any],
        envelope: _Envelope,
        state: WorkflowState,
        *,
        always_save: bool,
    ) -> None:
        context = _HandlingContext(self, envelope.attributes, workflow_id=state.workflow_id)
        self.metrics.handler_runs += 1
        result = await self._in_context(
            context,
            subscriber.route.handler(
                envelope.message, state.model_copy(deep=True), envelope.attributes
            ),
        )
        updated = apply_handler_result(state, result, handler_name=subscriber.name)
        if updated is not None and (result is not None or always_save):
            await self.persistence.save_workflow_state(updated)
        self._flush(context)

    async def _in_context(self, context: _HandlingContext, call: Awaitable[Any]) -> Any:
        token = _handling.set(context)
        try:
            return await call
        finally:
            _handling.reset(token)

    def _flush(self, context: _HandlingContext) -> None:
        context.open = False
        for outgoing in context.outbox:
            self._enqueue(outgoing.message, outgoing.attributes)

    @staticmethod
    def _check_state_names(state_types: list[type[WorkflowState]]) -> None:
        by_name: dict[str, type[WorkflowState]] = {}
        for state_type in state_types:
            other = by_name.setdefault(state_type.workflow_name, state_type)
            if other is state_type and state_types.count(state_type) > 1:
                raise ConfigurationError(
                    f"{state_type.__name__} is the state of more than one registered workflow "
                    "(or one workflow is registered twice); each workflow needs its own state"
                )
            if other is not state_type:
                raise ConfigurationError(
                    f"{state_type.__name__} and {other.__name__} both use workflow_name "
                    f"{state_type.workflow_name!r}; give each state type its own name"
                )


class _Retryable:
    """Handling of one message by one workflow instance; a conflict re-reads that state."""

    def __init__(
        self,
        bus: Bus,
        subscriber: _WorkflowSubscriber[Any],
        envelope: _Envelope,
        state: WorkflowState,
    ) -> None:
        self._bus = bus
        self._subscriber = subscriber
        self._envelope = envelope
        self._state: WorkflowState | None = state
        self._workflow_id = state.workflow_id

    async def run(self) -> None:
        if self._state is None:
            self._state = await self._read_again()
        state, self._state = self._state, None
        await self._bus._run_workflow_handler(
            self._subscriber, self._envelope, state, always_save=False
        )

    async def _read_again(self) -> WorkflowState:
        workflow_id = self._workflow_id
        by_id: MessageWorkflowMapping[Any, Any] = MessageWorkflowMapping(
            lookup=lambda _message, _attributes: workflow_id, maps_to="workflow_id"
        )
        found = await self._bus.persistence.get_workflow_state(
            self._subscriber.state_type, by_id, self._envelope.message, self._envelope.attributes
        )
        if not found:
            self._bus.metrics.unmatched += 1
            self._bus._logger.info(
                "%s: workflow %s is no longer running; %s was not applied to it",
                self._subscriber.name,
                workflow_id,
                type(self._envelope.message).__name__,
            )
            raise _NothingToDoError
        state: WorkflowState = found[0]
        return state


def _is_async(handler: object) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


def apply_handler_result(state: S, result: object, *, handler_name: str) -> S | None:
    """The state after a handler: ``None`` if it discarded the workflow.

    A handler returns ``None`` (no change), a mapping of changes, or a whole state. The
    ``workflow_id`` and ``workflow_version`` of the state it was given always win.
    """
    if result is None:
        return state
    if isinstance(result, WorkflowState):
        if type(result) is not type(state):
            raise TypeError(
                f"{handler_name} returned a {type(result).__name__}; it handles "
                f"{type(state).__name__}"
            )
        data = result.model_dump()
    elif isinstance(result, Mapping):
        unknown = set(result) - set(type(state).model_fields)
        if unknown:
            raise ValueError(
                f"{handler_name} returned changes to {sorted(unknown)}, which are not fields "
                f"of {type(state).__name__}"
            )
        data = {**state.model_dump(), **result}
    else:
        raise TypeError(
            f"{handler_name} returned a {type(result).__name__}; return a dict of changes, "
            "a state, or None"
        )
    if data.get("workflow_status") == WorkflowStatus.DISCARD:
        return None
    data["workflow_id"] = state.workflow_id
    data["workflow_version"] = state.workflow_version
    return type(state).model_validate(data, by_name=True, by_alias=False)
