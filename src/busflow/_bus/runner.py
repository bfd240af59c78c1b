"""The workflow runner: starts workflows, continues them, and re-reads on a conflict."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from busflow._bus.cache import StateCache
from busflow._bus.context import HandlingContext, Outgoing
from busflow._bus.handling import Handling, being_cancelled
from busflow._bus.ids import workflow_id_for
from busflow._bus.metrics import BusMetrics
from busflow._bus.ordering import Queued, Turns, WorkflowKeys
from busflow._bus.outbox import Dispatchable, Outbox, to_record
from busflow._bus.retries import RetryPolicy, is_retryable
from busflow._bus.routing import WorkflowSubscriber
from busflow._bus.telemetry import NoTelemetry, Telemetry
from busflow._bus.timeouts import DUE_AT_ATTRIBUTE
from busflow._errors import HandlerResultError, WorkflowConcurrencyError, WorkflowUniquenessError
from busflow._logs import about_message, about_workflow, error_for_log, timed
from busflow._persistence import Persistence, find_workflow, resolve_lookup
from busflow._values import lookup_key, stored_keys
from busflow._workflow import (
    MessageWorkflowMapping,
    WorkflowSender,
    WorkflowState,
    WorkflowStatus,
    addressee_of,
    sender_of,
    state_from,
)

__all__ = ["WaitingRun", "WorkflowRunner", "apply_handler_result"]

S = TypeVar("S", bound=WorkflowState)


@dataclass(slots=True)
class WaitingRun:
    """A workflow handler's run waiting behind its instance's turn.

    The runner holding that turn may run it in its own batch (see ``WorkflowRunner``), and
    then settles it as its unit would have.
    """

    subscriber: WorkflowSubscriber[Any]
    handling: Handling
    completion: str
    """What the waiting unit records when it succeeds."""
    workflow_id: str | None = None
    """The instance it will run on, where that is known before its lookup."""


class _StaleLookupError(Exception):
    """A state that the cache answered a lookup with was no longer running when saved."""


class _BatchUndoneError(Exception):
    """A run in a batch failed: the batch is undone, and each message runs on its own."""


@dataclass(slots=True)
class _Run:
    """One handler's run on a state, not saved yet."""

    handling: Handling
    outgoing: list[Dispatchable]


class WorkflowRunner:
    """Runs a workflow subscriber's handler on states from the persistence, and saves them.

    Each save records the message as applied and keeps what the handler sent in the state's
    outbox, in the same write; a message already applied does not run its handler again (see
    ``outbox``). A save that loses a race (``WorkflowConcurrencyError``) re-reads that one
    workflow and runs the handler again on the fresh state, for as long as other saves keep
    moving the workflow on (see ``RetryPolicy``). A save whose outcome is unknown is settled
    by reading the workflow back.

    A state this bus saved last comes from the ``StateCache`` instead of a read, and a run on
    it is always saved, so that the save's version check validates whatever the handler
    decided and sent. With coalescing on, the runner holding a workflow's turn also runs the
    messages already waiting for that workflow on the state in memory, one after another,
    and saves once: every message's id is recorded as applied and everything they sent is in
    the outbox of that one save. Any failure in such a batch undoes it, and each message then
    runs on its own.
    """

    def __init__(
        self,
        *,
        persistence: Persistence,
        sender: WorkflowSender,
        encode: Callable[[Outgoing], Dispatchable],
        outbox: Outbox,
        metrics: BusMetrics,
        policy: RetryPolicy,
        turns: Turns | None,
        keys: WorkflowKeys,
        logger: logging.Logger,
        applied_limit: int,
        values_in_logs: bool,
        telemetry: Telemetry,
        cache: StateCache,
        coalescing: bool,
    ) -> None:
        self._persistence = persistence
        self._cache = cache
        self._coalescing = coalescing and turns is not None
        self._sender = sender
        self._encode = encode
        self._outbox = outbox
        self._metrics = metrics
        self._policy = policy
        self._turns = turns
        self._keys = keys
        self._logger = logger
        self._applied_limit = applied_limit
        self._values_in_logs = values_in_logs
        self._telemetry = telemetry
        self._traced = not isinstance(telemetry, NoTelemetry)

    async def start(self, subscriber: WorkflowSubscriber[Any], handling: Handling) -> None:
        """Run a starting handler on a new state and save it, unless it discards it.

        The new workflow's id derives from the message's id, so a redelivered start finds the
        workflow it made instead of making another.
        """
        message_id = handling.attributes.message_id
        state_type = subscriber.state_type
        derived = (
            None if message_id is None else workflow_id_for(message_id, state_type.workflow_name)
        )
        originator = addressee_of(handling.attributes)
        for _ in range(self._policy.max_stalled_conflicts):
            workflow_id = derived or str(uuid.uuid4())
            state = state_from(
                state_type,
                {"workflow_id": workflow_id, "workflow_originator": originator},
                by_alias=False,
            )
            with about_workflow(state_type.workflow_name, workflow_id):
                try:
                    await self._run_handler(
                        subscriber, handling, state, always_save=True, may_coalesce=False
                    )
                    return
                except WorkflowUniquenessError as error:
                    self._metrics.duplicate_starts += 1
                    self._logger.warning(
                        "%s: duplicate start ignored: another running %s has the same %s%s",
                        subscriber.name,
                        state_type.workflow_name,
                        error.field,
                        f" ({error.value!r})" if self._values_in_logs else "",
                    )
                    return
                except WorkflowConcurrencyError:
                    self._metrics.conflicts += 1
                    if derived is None:
                        continue  # a random id that happened to exist: draw another
                existing = await self._read(subscriber, derived)
                if existing is not None:
                    if not await self._if_applied(subscriber, handling, existing):
                        self._metrics.duplicate_starts += 1
                        self._logger.warning(
                            "%s: workflow %s already exists; duplicate start ignored",
                            subscriber.name,
                            derived,
                        )
                    return
        raise WorkflowConcurrencyError(
            f"{subscriber.name}: {self._policy.max_stalled_conflicts} starts in a row found "
            "their new id taken; check the persistence",
            collection=state_type.workflow_name,
            workflow_id=derived or "",
        )

    async def continue_workflows(
        self, subscriber: WorkflowSubscriber[Any], handling: Handling, held: Hashable | None
    ) -> None:
        """Look up the running states a message maps to, and run the handler on each.

        ``held`` is the ordering key whose turn this call runs in. Each state found is
        handled in its own instance's turn: at once where that turn is ``held`` or free,
        otherwise by the worker holding it, on a fresh read.
        """
        with about_workflow(subscriber.state_type.workflow_name):
            mapping = subscriber.route.mapping
            assert mapping is not None
            cached = self._cache.look_up(
                subscriber.state_type, mapping, handling.message, handling.attributes
            )
            if cached is not None:
                self._metrics.state_cache_hits += 1
                try:
                    await self._continue_on(subscriber, handling, held, [cached], cached=True)
                    return
                except _StaleLookupError:
                    pass  # another process completed it: look the message up afresh
            states = await self._persistence.get_workflow_state(
                subscriber.state_type, mapping, handling.message, handling.attributes
            )
            if not states:
                await self._unmatched(subscriber, handling, mapping)
                return
            await self._continue_on(subscriber, handling, held, states, cached=False)

    async def _continue_on(
        self,
        subscriber: WorkflowSubscriber[Any],
        handling: Handling,
        held: Hashable | None,
        states: list[WorkflowState],
        *,
        cached: bool,
    ) -> None:
        first_error: Exception | None = None
        for state in states:
            completion = f"{subscriber.name}@{state.workflow_id}"
            if handling.already_done(completion):
                continue
            self._keys.remember(state, subscriber.mapped_fields)
            key = self._keys.of_instance(subscriber.state_type, state.workflow_id)
            try:
                if self._turns is None or key == held:
                    await self._run_on(subscriber, handling, state, cached=cached)
                elif self._turns.claim(key):
                    run = _bind(self._run_on, subscriber, handling, state, cached)
                    await self._turns.run(key, run)
                else:
                    fresh = _bind(self._run_on_fresh, subscriber, handling, state.workflow_id)
                    job = handling.unit(subscriber.name, fresh, completion=completion, queued=True)
                    waiting = WaitingRun(subscriber, handling, completion, state.workflow_id)
                    self._turns.wait_behind(key, job, waiting)
                    continue
            except _StaleLookupError:
                raise
            except Exception as error:  # the other states still get the message
                first_error = first_error or error
                continue
            handling.completed.append(completion)
        if first_error is not None:
            raise first_error

    async def _unmatched(
        self,
        subscriber: WorkflowSubscriber[Any],
        handling: Handling,
        mapping: MessageWorkflowMapping[Any, Any],
    ) -> None:
        """No running state matched: unless this message completed one, it is ignored."""
        if handling.attributes.message_id is not None:
            ended = await self._persistence.get_workflow_state(
                subscriber.state_type, mapping, handling.message, handling.attributes, True
            )
            applied = [state for state in ended if self._was_applied(handling, state)]
            for state in applied:
                await self._if_applied(subscriber, handling, state)
            if applied:
                return
        self._ignore(
            subscriber,
            handling,
            "no running %s matches %s; the message was ignored",
            subscriber.state_type.workflow_name,
            self._lookup_for_log(mapping, handling),
        )

    async def _run_on_fresh(
        self, subscriber: WorkflowSubscriber[Any], handling: Handling, workflow_id: str
    ) -> None:
        cached = self._cache.take(subscriber.state_type, workflow_id)
        if cached is not None:
            self._metrics.state_cache_hits += 1
        state = cached or await self._read(subscriber, workflow_id)
        if state is None:
            return
        try:
            await self._run_on(subscriber, handling, state, cached=cached is not None)
        except _StaleLookupError:
            self._no_longer_running(subscriber, handling, workflow_id)

    async def _run_on(
        self,
        subscriber: WorkflowSubscriber[Any],
        handling: Handling,
        state: WorkflowState,
        cached: bool = False,
    ) -> None:
        with about_workflow(state.workflow_name, state.workflow_id):
            stalled = 0
            while True:
                if self._was_applied(handling, state):
                    await self._if_applied(subscriber, handling, state)
                    return
                if state.workflow_status is not WorkflowStatus.RUNNING:
                    self._no_longer_running(subscriber, handling, state.workflow_id)
                    return
                try:
                    await self._run_handler(
                        subscriber, handling, state, always_save=cached, may_coalesce=True
                    )
                    return
                except WorkflowUniquenessError:
                    raise
                except _BatchUndoneError:
                    handling.alone = True
                    moved_on = True
                except WorkflowConcurrencyError as error:
                    self._metrics.conflicts += 1
                    conflict, moved_on = error, False
                fresh = await self._read(subscriber, state.workflow_id)
                if fresh is None or fresh.workflow_status is not WorkflowStatus.RUNNING:
                    if cached:
                        raise _StaleLookupError
                    if fresh is None:
                        self._no_longer_running(subscriber, handling, state.workflow_id)
                        return
                moved_on = moved_on or (fresh.workflow_version > state.workflow_version)
                stalled = 0 if moved_on else stalled + 1
                if stalled >= self._policy.max_stalled_conflicts:
                    raise conflict
                state, cached = fresh, False

    def _lookup_for_log(self, mapping: MessageWorkflowMapping[Any, Any], handling: Handling) -> str:
        """``field=value`` for a log line; the value only if it is a workflow id, or if the
        bus logs values."""
        if mapping.maps_to != "workflow_id" and not self._values_in_logs:
            return f"the message's {mapping.maps_to}"
        return f"{mapping.maps_to}={_safe_lookup(mapping, handling)!r}"

    def _was_applied(self, handling: Handling, state: WorkflowState) -> bool:
        message_id = handling.attributes.message_id
        return message_id is not None and message_id in state.workflow_applied

    async def _if_applied(
        self, subscriber: WorkflowSubscriber[Any], handling: Handling, state: WorkflowState
    ) -> bool:
        """If ``state`` applied this message already, make sure what it sent has left."""
        if not self._was_applied(handling, state):
            return False
        origin = handling.attributes.message_id
        sent = await self._outbox.dispatch_saved(
            state, [record for record in state.workflow_outbox if record.origin == origin]
        )
        self._metrics.duplicates += 1
        self._logger.info(
            "%s: %s %s was applied to workflow %s already; not applied again%s",
            subscriber.name,
            type(handling.message).__name__,
            origin,
            state.workflow_id,
            f", {sent} saved outgoing message(s) dispatched again" if sent else "",
        )
        return True

    def _ignore(
        self,
        subscriber: WorkflowSubscriber[Any],
        handling: Handling,
        why: str,
        *arguments: object,
    ) -> None:
        """A message that found no running workflow: counted as unmatched, and as a timeout if
        it is one. One that another workflow sent to this workflow (a reply) is counted as an
        unmatched reply and logged at WARNING, since its sender may be waiting for an answer."""
        self._metrics.unmatched += 1
        if DUE_AT_ATTRIBUTE in handling.attributes.attributes:
            self._metrics.timeouts_ignored += 1
        level = logging.INFO
        if _from_another_workflow(handling, subscriber.state_type.workflow_name):
            self._metrics.replies_unmatched += 1
            level = logging.WARNING
            why += "; another workflow sent it here"
        self._logger.log(level, f"%s: {why}", subscriber.name, *arguments)

    def _no_longer_running(
        self, subscriber: WorkflowSubscriber[Any], handling: Handling, workflow_id: str
    ) -> None:
        self._ignore(
            subscriber,
            handling,
            "workflow %s is no longer running; %s was not applied to it",
            workflow_id,
            type(handling.message).__name__,
        )

    async def _read(
        self, subscriber: WorkflowSubscriber[Any], workflow_id: str
    ) -> WorkflowState | None:
        """The workflow with ``workflow_id``, completed or not, fresh from the persistence."""
        return await find_workflow(self._persistence, subscriber.state_type, workflow_id)

    async def _run_handler(
        self,
        subscriber: WorkflowSubscriber[Any],
        handling: Handling,
        state: WorkflowState,
        *,
        always_save: bool,
        may_coalesce: bool,
    ) -> None:
        """Run the handler on ``state`` (and, coalescing, the runs waiting for the same
        workflow), save the outcome with its outbox, then dispatch the outbox."""
        now = datetime.now(UTC) if state.workflow_outbox else None
        if now is not None:
            await self._outbox.rescue(state, now)
        updated, result, outgoing = await self._handle(subscriber, handling, state)
        if updated is None or (result is None and not always_save):
            await self._outbox.dispatch(outgoing, state)
            return
        runs = [_Run(handling, outgoing)]
        taken: list[Queued] = []
        if may_coalesce and self._coalescing and not handling.alone:
            updated = await self._coalesce(updated, runs, taken)
        try:
            message_ids = [run.handling.attributes.message_id for run in runs]
            applied = state.workflow_applied + [each for each in message_ids if each]
            updated.workflow_applied = applied[-self._applied_limit :]
            sent = [
                (each, run.handling.attributes.message_id) for run in runs for each in run.outgoing
            ]
            if now is not None or sent:
                now = now or datetime.now(UTC)
                updated.workflow_outbox = self._outbox.carried(state, now) + [
                    to_record(each, origin, now) for each, origin in sent
                ]
            stored = await self._save(subscriber, handling, updated)
        except BaseException:
            self._put_back(updated, taken)
            raise
        self._outbox.saved(updated)
        self._keys.remember(updated, subscriber.mapped_fields)
        if stored is not None:
            self._cache.put(stored)
        outgoing = [each for each, _ in sent]
        try:
            if outgoing:
                await self._outbox.dispatch(outgoing, updated)
        except BaseException:
            # Saved, but not all sent: each run taken into the batch runs again on its own,
            # finds its message applied, and sends what it saved (as a redelivery would).
            self._put_back(updated, taken)
            raise
        self._outbox.clear_later(updated, [each.message.message_id for each in outgoing])
        for queued in taken:
            await self._settle_taken(queued, updated.workflow_id)

    async def _handle(
        self, subscriber: WorkflowSubscriber[Any], handling: Handling, state: WorkflowState
    ) -> tuple[WorkflowState | None, object, list[Dispatchable]]:
        """Run one handler on ``state``: the state after it (``None`` if it discarded the
        workflow), what it returned, and what it sent, encoded."""
        name, workflow_id = state.workflow_name, state.workflow_id
        context = HandlingContext(
            self._sender,
            handling.attributes,
            workflow=(name, workflow_id),
            handler=subscriber.name,
        )
        self._metrics.handler_runs += 1
        handler = subscriber.route.handler
        if self._traced or self._logger.isEnabledFor(logging.DEBUG):
            with (
                timed(self._logger, subscriber.name, handling.delivery.message.name),
                self._telemetry.handler_run(subscriber.name, name, workflow_id),
                context,
            ):
                result = await handler(handling.message, state, handling.attributes)
        else:  # nothing observes the run: no blocks that would do nothing, once per message
            with context:
                result = await handler(handling.message, state, handling.attributes)
        updated = apply_handler_result(state, result, handler_name=subscriber.name)
        context.open = False
        return updated, result, [self._encode(each) for each in context.outbox]

    async def _coalesce(
        self, state: WorkflowState, runs: list[_Run], taken: list[Queued]
    ) -> WorkflowState:
        """Run the handlers waiting for this workflow's turn on ``state``, one after another,
        while each is sure to reach this workflow; the state after the last of them."""
        assert self._turns is not None
        key = self._keys.of_instance(type(state), state.workflow_id)
        in_batch = {run.handling.attributes.message_id for run in runs}

        def joins(subject: object) -> bool:
            return self._joins(subject, state, in_batch)  # the state as the batch left it

        while state.workflow_status is WorkflowStatus.RUNNING:
            queued = self._turns.take_next(key, joins)
            if queued is None:
                break
            taken.append(queued)
            waiting = queued.subject
            assert isinstance(waiting, WaitingRun)
            try:
                with about_message(waiting.handling.delivery.message):
                    updated, _, outgoing = await self._handle(
                        waiting.subscriber, waiting.handling, state
                    )
            except Exception as error:
                self._put_back(state, taken)
                raise _BatchUndoneError from error
            if updated is None:  # it discards the workflow: let it do so on its own
                self._put_back(state, taken)
                raise _BatchUndoneError
            runs.append(_Run(waiting.handling, outgoing))
            in_batch.add(waiting.handling.attributes.message_id)
            state = updated
        if taken:
            self._metrics.coalesced += len(taken)
        return state

    def _joins(self, subject: object, state: WorkflowState, in_batch: set[str | None]) -> bool:
        """Whether a waiting run would reach ``state``'s workflow, and only it, right now,
        and its message is in neither ``state``'s applied ids nor the batch's (``in_batch``)."""
        if not isinstance(subject, WaitingRun) or subject.handling.alone:
            return False
        subscriber, handling = subject.subscriber, subject.handling
        message_id = handling.attributes.message_id
        mapping = subscriber.route.mapping
        if (
            subscriber.state_type is not type(state)
            or subscriber.route.starts_workflow
            or mapping is None
            or message_id is None
            or message_id in in_batch
            or message_id in state.workflow_applied
            or handling.already_done(f"{subscriber.name}@{state.workflow_id}")
        ):
            return False
        if subject.workflow_id is not None:
            return subject.workflow_id == state.workflow_id
        if not self._cache.answers(subscriber.state_type, mapping.maps_to):
            return False
        # Looked up now, not when the message arrived: a handler of the same message may
        # have changed the attributes a lookup reads. A lookup that fails, or gives a value
        # no state can hold, runs on its own, which reports it.
        try:
            value = resolve_lookup(
                mapping, handling.message, handling.attributes, where=state.workflow_name
            )
        except Exception:
            return False
        if value is None:
            return False
        return lookup_key(value) == lookup_key(getattr(state, mapping.maps_to))

    def _put_back(self, state: WorkflowState, taken: list[Queued]) -> None:
        """Hand runs taken into a batch back to the turn, to run one at a time."""
        if not taken:
            return
        assert self._turns is not None
        for queued in taken:
            assert isinstance(queued.subject, WaitingRun)
            queued.subject.handling.alone = True
        self._turns.put_back(self._keys.of_instance(type(state), state.workflow_id), taken)
        taken.clear()

    async def _settle_taken(self, queued: Queued, workflow_id: str) -> None:
        """A run taken into a batch succeeded: record it as its unit would have."""
        waiting = queued.subject
        assert isinstance(waiting, WaitingRun)
        handling = waiting.handling
        with about_message(handling.delivery.message):  # this worker holds another message
            instance = f"{waiting.subscriber.name}@{workflow_id}"
            handling.completed.append(instance)
            if waiting.completion != instance:
                handling.completed.append(waiting.completion)
            await handling.unit_done()

    async def _save(
        self, subscriber: WorkflowSubscriber[Any], handling: Handling, state: WorkflowState
    ) -> WorkflowState | None:
        """Save ``state``; a save whose outcome is unknown is settled by reading it back.

        Returns the state as stored, when the persistence or the read gives it.
        """
        try:
            return await self._persistence.save_workflow_state(state)
        except WorkflowConcurrencyError:
            raise
        except (Exception, asyncio.CancelledError) as error:
            if isinstance(error, asyncio.CancelledError) and being_cancelled():
                raise
            if not is_retryable(error):
                raise
            stored = await self._read(subscriber, state.workflow_id)
            landed = (
                stored is not None
                and stored.workflow_version == state.workflow_version + 1
                and stored.workflow_applied[-1:] == state.workflow_applied[-1:]
            )
            self._logger.warning(
                "%s: saving workflow %s of %s ended in %s; read back, the save %s",
                subscriber.name,
                state.workflow_id,
                state.workflow_name,
                error_for_log(error, values=self._values_in_logs),
                "is there" if landed else "is not there, so it runs again on fresh state",
            )
            if landed:
                return stored
            raise WorkflowConcurrencyError(
                f"{state.workflow_name}: the save of workflow {state.workflow_id} at version "
                f"{state.workflow_version} did not land; read it again and retry",
                collection=state.workflow_name,
                workflow_id=state.workflow_id,
                expected_version=state.workflow_version,
            ) from error


def _bind(
    run: Callable[..., Awaitable[None]],
    subscriber: WorkflowSubscriber[Any],
    handling: Handling,
    *arguments: Any,
) -> Callable[[], Awaitable[None]]:
    async def bound() -> None:
        await run(subscriber, handling, *arguments)

    return bound


def _from_another_workflow(handling: Handling, workflow_name: str) -> bool:
    """Whether a workflow's handler sent this message to a workflow of ``workflow_name`` other
    than itself, by the sticky ``workflow_id``."""
    sender = sender_of(handling.attributes)
    addressee = addressee_of(handling.attributes)
    return (
        sender is not None
        and addressee is not None
        and addressee.workflow_name == workflow_name
        and addressee != sender
    )


def _safe_lookup(mapping: MessageWorkflowMapping[Any, Any], handling: Handling) -> object:
    try:
        return mapping.lookup(handling.message, handling.attributes)
    except Exception as error:
        return f"<lookup failed: {error!r}>"


def apply_handler_result(state: S, result: object, *, handler_name: str) -> S | None:
    """The state after a handler: ``None`` if it discarded the workflow.

    A handler returns ``None`` (no change), a mapping of changes, or a whole state. The
    ``workflow_id`` and ``workflow_version`` of the state it was given always win. Anything
    else raises ``HandlerResultError``, which is never retried.
    """
    if result is None:
        return state
    state_type = type(state)
    if type(result) is dict or isinstance(result, Mapping):  # a dict without the ABC check
        fields = stored_keys(state_type)  # keyed by field name, and cached
        if not result.keys() <= fields.keys():
            unknown = set(result) - set(fields)
            raise HandlerResultError(
                f"{handler_name} returned changes to {sorted(map(str, unknown))}, which are "
                f"not fields of {state_type.__name__}"
            )
        data = {**state.__dict__, **result}
    elif isinstance(result, WorkflowState):
        if type(result) is not state_type:
            raise HandlerResultError(
                f"{handler_name} returned a {type(result).__name__}; it handles "
                f"{state_type.__name__}"
            )
        data = result.model_dump()
    else:
        raise HandlerResultError(
            f"{handler_name} returned a {type(result).__name__}; return a dict of changes, "
            "a state, or None"
        )
    if data.get("workflow_status") == WorkflowStatus.DISCARD:
        return None
    data["workflow_id"] = state.workflow_id
    data["workflow_version"] = state.workflow_version
    data["workflow_applied"] = state.workflow_applied
    data["workflow_outbox"] = state.workflow_outbox
    data["workflow_originator"] = state.workflow_originator
    try:
        return state_from(state_type, data, by_alias=False)
    except ValidationError as error:
        problems = ", ".join(
            f"{'.'.join(map(str, problem['loc']))}: {problem['msg']}"
            for problem in error.errors(include_input=False)[:3]
        )
        raise HandlerResultError(
            f"{handler_name} returned a change that does not fit {state_type.__name__} ({problems})"
        ) from None
