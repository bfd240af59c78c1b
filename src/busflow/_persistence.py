"""The contract between the bus and a store of workflow state.

It brings node-ts/bus's ``Persistence`` interface to Python. A persistence holds workflow
states, one collection (or table) per state type, and guards each save with the state's
``workflow_version``: saving version ``n`` succeeds only if the stored version is ``n``, and
stores ``n + 1``. ``busflow.testing`` holds the contract suite that every implementation runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from busflow._errors import ConfigurationError, InvalidLookupValueError
from busflow._messages import Message, MessageAttributes
from busflow._values import StoredScalar, stored_scalar
from busflow._workflow import MessageWorkflowMapping, WorkflowState, lookup_field_problem

__all__ = [
    "CoreDependencies",
    "Persistence",
    "WorkflowReads",
    "find_workflow",
    "find_workflows",
    "unique_running_fields",
]

S = TypeVar("S", bound=WorkflowState)


@dataclass(frozen=True)
class CoreDependencies:
    """What the bus hands a persistence before startup."""

    logger_factory: Callable[[str], logging.Logger] = field(default=logging.getLogger)
    """Returns the logger for a name; by default the standard library's ``logging.getLogger``."""


@runtime_checkable
class Persistence(Protocol):
    """A store of workflow state.

    Beside these four members a persistence may define ``async initialize()`` (open
    connections), ``async dispose()`` (close them), ``async clear_outbox(state_type,
    workflow_id, message_ids)`` (remove those messages from the stored ``workflow_outbox``,
    whatever the stored version, without changing it), and ``unique_running_fields(state_type)``
    (the fields of which it lets at most one running workflow hold each value); the bus calls
    them when present.
    Without ``prepare`` a persistence must still work, logging under its own logger name.

    A persistence stores every field of a state, the framework's ``workflow_applied``,
    ``workflow_outbox`` and ``workflow_originator`` included, in one atomic write: that is what
    makes a message's effects happen once.
    """

    def prepare(self, core_dependencies: CoreDependencies) -> None:
        """Receive the bus's dependencies, such as its logger factory, before startup."""

    async def initialize_workflow(
        self,
        state_type: type[WorkflowState],
        mappings: Sequence[MessageWorkflowMapping[Any, Any]],
    ) -> None:
        """Set up storage for a state type and the fields its mappings look up (idempotent).

        The bus calls it for all its state types at once, so calls for different state types
        may run concurrently.
        """

    async def get_workflow_state(
        self,
        state_type: type[S],
        mapping: MessageWorkflowMapping[Any, Any],
        message: Message,
        attributes: MessageAttributes,
        include_completed: bool = False,
    ) -> list[S]:
        """Return copies of the states whose ``mapping.maps_to`` field equals the lookup.

        Only running states unless ``include_completed``; ``[]`` when the lookup is ``None``.
        """

    async def save_workflow_state(self, state: WorkflowState) -> WorkflowState | None:
        """Create (version 0) or update (version n) a state, never mutating ``state``.

        Raises ``WorkflowConcurrencyError`` when the stored version is not ``n``, or when a
        version-0 state's id already exists. May return the state as it will read back, at
        version ``n + 1``, as a new object that it keeps no reference to: the bus then keeps
        it for the workflow's next message and skips a read (see ``Bus``'s state cache). A
        persistence that returns ``None``, as node-ts/bus's do, is read each time.
        """


def unique_running_fields(
    persistence: Persistence, state_type: type[WorkflowState]
) -> tuple[str, ...]:
    """The fields of ``state_type`` whose every value at most one running workflow holds, as
    ``persistence`` enforces them (``with_workflow_options(unique_running=...)``)."""
    fields = getattr(persistence, "unique_running_fields", None)
    return () if fields is None else tuple(fields(state_type))


LookupValue = StoredScalar
"""What a lookup gives a persistence to compare: a scalar, as stored values are kept."""


def resolve_lookup(
    mapping: MessageWorkflowMapping[Any, Any],
    message: Message,
    attributes: MessageAttributes,
    *,
    where: str,
) -> LookupValue | None:
    """Run a mapping's lookup and give its value as stored values are kept.

    Persistences call this so that every one treats a lookup alike: ``None`` means "no
    workflow", and a scalar is normalised by the rules in ``busflow._values`` (an enum to its
    value, a datetime to UTC to the millisecond) to be compared by equality. Anything else (a
    dict, a list, a model taken from a message, or a value no state may hold) raises
    ``InvalidLookupValueError`` naming ``where`` and the field.
    """
    value = mapping.lookup(message, attributes)
    if value is None:
        return None
    try:
        return stored_scalar(value)
    except ValueError as refused:
        raise InvalidLookupValueError(
            f"{where}: the lookup for {mapping.maps_to!r} on {type(message).__name__} returned "
            f"{refused}"
        ) from None


_NO_MESSAGE = Message()
_NO_ATTRIBUTES = MessageAttributes()


async def find_workflows(
    persistence: Persistence,
    state_type: type[S],
    field_name: str,
    value: object,
    *,
    include_completed: bool = True,
) -> list[S]:
    """The states of ``state_type`` whose ``field_name`` equals ``value``, read from
    ``persistence`` with no message and no mapping of yours.

    The value is compared by equality as a lookup's is (``resolve_lookup``): a dict, a list or
    any other value no state may hold raises ``InvalidLookupValueError``, so it can never turn
    into a query; ``None`` finds nothing. A field the state does not have, or one busflow sets
    itself, raises ``ConfigurationError`` naming the fields there are.
    """
    problem = lookup_field_problem(state_type, field_name)
    if problem is not None:
        raise ConfigurationError(
            f"find_workflows: {state_type.__name__} cannot be looked up by {problem}"
        )

    def lookup(_message: Message, _attributes: MessageAttributes) -> Any:
        return value  # checked by the persistence, through resolve_lookup

    mapping: MessageWorkflowMapping[Any, Any] = MessageWorkflowMapping(lookup, field_name)
    return await persistence.get_workflow_state(
        state_type, mapping, _NO_MESSAGE, _NO_ATTRIBUTES, include_completed
    )


async def find_workflow(
    persistence: Persistence, state_type: type[S], workflow_id: str
) -> S | None:
    """The state of ``state_type`` with ``workflow_id``, completed or not; ``None`` if there is
    none."""
    found = await find_workflows(persistence, state_type, "workflow_id", workflow_id)
    return found[0] if found else None


class WorkflowReads:
    """The read API of a persistence: workflow states by id or by a field's value.

    ``InMemoryPersistence`` and ``MongoPersistence`` inherit it; ``Bus.find_workflow`` and
    ``Bus.find_workflows`` offer the same over any persistence.
    """

    async def find_workflow(self: Persistence, state_type: type[S], workflow_id: str) -> S | None:
        """The state with ``workflow_id``, completed or not; ``None`` if there is none."""
        return await find_workflow(self, state_type, workflow_id)

    async def find_workflows(
        self: Persistence,
        state_type: type[S],
        field_name: str,
        value: object,
        *,
        include_completed: bool = True,
    ) -> list[S]:
        """The states whose ``field_name`` equals ``value``; completed ones too unless
        ``include_completed=False``. See ``busflow._persistence.find_workflows``."""
        return await find_workflows(
            self, state_type, field_name, value, include_completed=include_completed
        )
