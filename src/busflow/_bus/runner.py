"""The workflow runner: starts workflows, continues them, and re-reads on a conflict."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, TypeVar

from pydantic import ValidationError

from busflow._bus.context import HandlingContext, run_in_context
from busflow._bus.handling import Handling
from busflow._bus.metrics import BusMetrics
from busflow._bus.ordering import Turns, WorkflowKeys
from busflow._bus.retries import RetryPolicy
from busflow._bus.routing import WorkflowSubscriber
from busflow._errors import HandlerResultError, WorkflowConcurrencyError, WorkflowUniquenessError
from busflow._persistence import Persistence
from busflow._workflow import (
    MessageWorkflowMapping,
    WorkflowSender,
    WorkflowState,
    WorkflowStatus,
)

__all__ = ["WorkflowRunner", "apply_handler_result"]

S = TypeVar("S", bound=WorkflowState)


class WorkflowRunner:
    """Runs a workflow subscriber's handler on states from the persistence, and saves them.

    A save that loses a race (``WorkflowConcurrencyError``) re-reads that one workflow and
    runs the handler again on the fresh state, for as long as other saves keep moving the
    workflow on (see ``RetryPolicy``). Messages the handler sends leave through ``flush``
    once its state is saved.
    """

    def __init__(
        self,
        *,
        persistence: Persistence,
        sender: WorkflowSender,
        flush: Callable[[HandlingContext], Awaitable[None]],
        metrics: BusMetrics,
        policy: RetryPolicy,
        turns: Turns | None,
        keys: WorkflowKeys,
        logger: logging.Logger,
    ) -> None:
        self._persistence = persistence
        self._sender = sender
        self._flush = flush
        self._metrics = metrics
        self._policy = policy
        self._turns = turns
        self._keys = keys
        self._logger = logger

    async def start(self, subscriber: WorkflowSubscriber[Any], handling: Handling) -> None:
        """Run a starting handler on a new state and save it, unless it discards it."""
        for _ in range(self._policy.max_stalled_conflicts):
            state = subscriber.state_type.model_validate({"workflow_id": str(uuid.uuid4())})
            try:
                await self._run_handler(subscriber, handling, state, always_save=True)
                return
            except WorkflowUniquenessError as error:
                self._metrics.duplicate_starts += 1
                self._logger.warning("%s: duplicate start ignored: %s", subscriber.name, error)
                return
            except WorkflowConcurrencyError:
                self._metrics.conflicts += 1
        raise WorkflowConcurrencyError(
            f"{subscriber.name}: {self._policy.max_stalled_conflicts} new ids in a row already "
            "existed; check the persistence",
            collection=subscriber.state_type.workflow_name,
            workflow_id="",
        )

    async def continue_workflows(
        self, subscriber: WorkflowSubscriber[Any], handling: Handling, held: Hashable | None
    ) -> None:
        """Look up the running states a message maps to, and run the handler on each.

        ``held`` is the ordering key whose turn this call runs in. Each state found is
        handled in its own instance's turn: at once where that turn is ``held`` or free,
        otherwise by the worker holding it, on a fresh read.
        """
        mapping = subscriber.route.mapping
        assert mapping is not None
        states = await self._persistence.get_workflow_state(
            subscriber.state_type, mapping, handling.message, handling.attributes
        )
        if not states:
            self._metrics.unmatched += 1
            self._logger.info(
                "%s: no running %s matches %s=%r; the message was ignored",
                subscriber.name,
                subscriber.state_type.workflow_name,
                mapping.maps_to,
                _safe_lookup(mapping, handling),
            )
            return
        first_error: Exception | None = None
        for state in states:
            completion = f"{subscriber.name}@{state.workflow_id}"
            if handling.already_done(completion):
                continue
            self._keys.remember(state, subscriber.mapped_fields)
            key = self._keys.of_instance(subscriber.state_type, state.workflow_id)
            try:
                if self._turns is None or key == held:
                    await self._run_on(subscriber, handling, state)
                elif self._turns.claim(key):
                    await self._turns.run(key, _bind(self._run_on, subscriber, handling, state))
                else:
                    fresh = _bind(self._run_on_fresh, subscriber, handling, state.workflow_id)
                    job = handling.unit(subscriber.name, fresh, completion=completion)
                    self._turns.wait_behind(key, job)
                    continue
            except Exception as error:  # the other states still get the message
                first_error = first_error or error
                continue
            handling.completed.append(completion)
        if first_error is not None:
            raise first_error

    async def _run_on_fresh(
        self, subscriber: WorkflowSubscriber[Any], handling: Handling, workflow_id: str
    ) -> None:
        state = await self._read(subscriber, handling, workflow_id)
        if state is not None:
            await self._run_on(subscriber, handling, state)

    async def _run_on(
        self, subscriber: WorkflowSubscriber[Any], handling: Handling, state: WorkflowState
    ) -> None:
        stalled = 0
        while True:
            try:
                await self._run_handler(subscriber, handling, state, always_save=False)
                return
            except WorkflowUniquenessError:
                raise
            except WorkflowConcurrencyError:
                self._metrics.conflicts += 1
                fresh = await self._read(subscriber, handling, state.workflow_id)
                if fresh is None:
                    return
                moved_on = fresh.workflow_version > state.workflow_version
                stalled = 0 if moved_on else stalled + 1
                if stalled >= self._policy.max_stalled_conflicts:
                    raise
                state = fresh

    async def _read(
        self, subscriber: WorkflowSubscriber[Any], handling: Handling, workflow_id: str
    ) -> WorkflowState | None:
        by_id: MessageWorkflowMapping[Any, Any] = MessageWorkflowMapping(
            lookup=lambda _message, _attributes: workflow_id, maps_to="workflow_id"
        )
        found = await self._persistence.get_workflow_state(
            subscriber.state_type, by_id, handling.message, handling.attributes
        )
        if not found:
            self._metrics.unmatched += 1
            self._logger.info(
                "%s: workflow %s is no longer running; %s was not applied to it",
                subscriber.name,
                workflow_id,
                type(handling.message).__name__,
            )
            return None
        state: WorkflowState = found[0]
        return state

    async def _run_handler(
        self,
        subscriber: WorkflowSubscriber[Any],
        handling: Handling,
        state: WorkflowState,
        *,
        always_save: bool,
    ) -> None:
        context = HandlingContext(
            self._sender,
            handling.attributes,
            workflow_id=state.workflow_id,
            origin=f"{handling.attributes.message_id}/{subscriber.name}/{state.workflow_id}",
        )
        self._metrics.handler_runs += 1
        result = await run_in_context(
            context, subscriber.route.handler(handling.message, state, handling.attributes)
        )
        updated = apply_handler_result(state, result, handler_name=subscriber.name)
        if updated is not None and (result is not None or always_save):
            await self._persistence.save_workflow_state(updated)
            self._keys.remember(updated, subscriber.mapped_fields)
        await self._flush(context)


def _bind(
    run: Callable[[WorkflowSubscriber[Any], Handling, Any], Awaitable[None]],
    subscriber: WorkflowSubscriber[Any],
    handling: Handling,
    argument: Any,
) -> Callable[[], Awaitable[None]]:
    async def bound() -> None:
        await run(subscriber, handling, argument)

    return bound


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
    if isinstance(result, WorkflowState):
        if type(result) is not state_type:
            raise HandlerResultError(
                f"{handler_name} returned a {type(result).__name__}; it handles "
                f"{state_type.__name__}"
            )
        data = result.model_dump()
    elif isinstance(result, Mapping):
        fields = state_type.model_fields
        if not result.keys() <= fields.keys():
            unknown = set(result) - set(fields)
            raise HandlerResultError(
                f"{handler_name} returned changes to {sorted(map(str, unknown))}, which are "
                f"not fields of {state_type.__name__}"
            )
        data = {**state.__dict__, **result}
    else:
        raise HandlerResultError(
            f"{handler_name} returned a {type(result).__name__}; return a dict of changes, "
            "a state, or None"
        )
    if data.get("workflow_status") == WorkflowStatus.DISCARD:
        return None
    data["workflow_id"] = state.workflow_id
    data["workflow_version"] = state.workflow_version
    try:
        return state_type.model_validate(data, by_name=True, by_alias=False)
    except ValidationError as error:
        problems = ", ".join(
            f"{'.'.join(map(str, problem['loc']))}: {problem['msg']}"
            for problem in error.errors(include_input=False)[:3]
        )
        raise HandlerResultError(
            f"{handler_name} returned a change that does not fit {state_type.__name__} ({problems})"
        ) from None
