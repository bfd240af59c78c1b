"""Every error busflow raises on purpose.

The tree, so that a caller can catch as broadly or as narrowly as it needs::

    BusflowError
    ├── ConfigurationError            a workflow or persistence is set up wrongly (at startup)
    ├── PersistenceError              reading or writing workflow state failed
    │   ├── PersistenceConnectionError    the database cannot be reached
    │   ├── WorkflowConcurrencyError      a stale version, or a workflow that already exists
    │   │   └── WorkflowUniquenessError       another running workflow holds a unique value
    │   ├── StoredStateError              a stored document no longer fits its state model
    │   ├── InvalidStateValueError        a state value that cannot be stored faithfully
    │   └── InvalidLookupValueError       a mapping lookup returned a value no stored one can equal
    ├── BusError                      the bus was used in a way it does not support
    │   ├── BusNotRunningError            send or publish on a bus that was disposed
    │   └── BusIdleTimeoutError           wait_until_idle timed out (also a TimeoutError)
    ├── HandlerResultError            a handler returned something that is not a state change
    └── MessageDecodeError            a delivered message has an unknown name or a bad body

Driver errors are translated to these at the persistence boundary, and the original is kept
as ``__cause__``.

Each error says whether handling the same message again could succeed: ``retryable``. The bus
redelivers a message whose handling failed with a retryable error (any exception that is not
a busflow error counts as one, unless it has ``retryable = False``), and dead-letters it after
one attempt otherwise. Version conflicts are retried on the spot, on fresh state.
"""

from __future__ import annotations

__all__ = [
    "BusError",
    "BusIdleTimeoutError",
    "BusNotRunningError",
    "BusflowError",
    "ConfigurationError",
    "HandlerResultError",
    "InvalidLookupValueError",
    "InvalidStateValueError",
    "MessageDecodeError",
    "PersistenceConnectionError",
    "PersistenceError",
    "StoredStateError",
    "WorkflowConcurrencyError",
    "WorkflowUniquenessError",
]


class BusflowError(Exception):
    """The root of every error that busflow raises on purpose."""

    retryable: bool = False
    """Whether handling the same message again could succeed."""
    text_holds_values: bool = False
    """Whether its text may quote values of a state or a message: busflow's log lines at INFO
    and above then give only its type, unless ``with_values_in_logs()``."""


class ConfigurationError(BusflowError):
    """A workflow, mapping or persistence is configured wrongly; raised at startup."""


class PersistenceError(BusflowError):
    """Reading or writing workflow state failed."""

    retryable = True
    text_holds_values = True  # it may quote the driver, or a lookup


class PersistenceConnectionError(PersistenceError):
    """The database cannot be reached. The message names the host, never a password."""

    text_holds_values = False


class WorkflowConcurrencyError(PersistenceError):
    """A save lost a race.

    Raised when the stored version is not the version the state was read at, when a new
    workflow's id already exists, or when a save would break a uniqueness rule. The bus
    handles it by reading the state again and re-running the handler.
    """

    text_holds_values = False

    def __init__(
        self,
        message: str,
        *,
        collection: str,
        workflow_id: str,
        expected_version: int | None = None,
    ) -> None:
        super().__init__(message)
        self.collection = collection
        self.workflow_id = workflow_id
        self.expected_version = expected_version


class WorkflowUniquenessError(WorkflowConcurrencyError):
    """A save would give a second running workflow a value that must be unique.

    Raised by persistences that enforce uniqueness (``MongoPersistence``'s
    ``unique_running``). The bus ignores such a start as a duplicate, with a warning, and
    dead-letters any other such save at once: retrying cannot help.
    """

    retryable = False
    text_holds_values = True  # it names the value that is not unique

    def __init__(
        self,
        message: str,
        *,
        collection: str,
        workflow_id: str,
        field: str,
        value: object,
        expected_version: int | None = None,
    ) -> None:
        super().__init__(
            message,
            collection=collection,
            workflow_id=workflow_id,
            expected_version=expected_version,
        )
        self.field = field
        self.value = value

    @classmethod
    def on_save(
        cls, collection: str, workflow_id: str, field: str, value: object, expected_version: int
    ) -> WorkflowUniquenessError:
        """The error for a save of ``workflow_id`` refused because another running workflow
        holds ``value`` in the unique field stored as ``field``."""
        return cls(
            f"{collection}: another running workflow already has {field}={value!r}, so "
            f"workflow {workflow_id} was not saved (unique_running); the message that started "
            "it may have been delivered twice",
            collection=collection,
            workflow_id=workflow_id,
            field=field,
            value=value,
            expected_version=expected_version,
        )


class StoredStateError(PersistenceError):
    """A stored document does not fit its state model (a renamed field, a wrong type).

    Nothing is overwritten: fix the document or the model, then deliver the message again.
    """

    retryable = False
    text_holds_values = False

    def __init__(self, message: str, *, collection: str, workflow_id: object) -> None:
        super().__init__(message)
        self.collection = collection
        self.workflow_id = workflow_id


class InvalidStateValueError(PersistenceError):
    """A state holds a value that cannot be stored faithfully. Nothing was written.

    Every persistence refuses the same values (see the README's "What is stored"); ``field``
    is the path to the value, such as ``notes['$where']`` or ``history[1].street``.
    """

    def __init__(self, message: str, *, collection: str, workflow_id: str, field: str) -> None:
        super().__init__(message)
        self.collection = collection
        self.workflow_id = workflow_id
        self.field = field

    retryable = False


class InvalidLookupValueError(PersistenceError):
    """A mapping's lookup returned a value that no stored value can equal.

    That is a dict, list or model, or a value no state may hold (text with a lone surrogate,
    an integer beyond 64 bits). Lookup values come from messages, so they are only ever
    compared by equality; a structured value is refused rather than risk it being read as a
    query.
    """

    retryable = False


class BusError(BusflowError):
    """The bus was used in a way it does not support."""


class BusNotRunningError(BusError):
    """A message was sent or published on a bus that has been disposed."""


class BusIdleTimeoutError(BusError, TimeoutError):
    """``wait_until_idle`` reached its timeout while messages were still queued or in flight."""


class HandlerResultError(BusflowError):
    """A workflow handler returned something that is not a change to its state.

    For example an unknown field, a value of the wrong type, or a state of another type. The
    same handler would return it again, so the message is dead-lettered at once.
    """


class MessageDecodeError(BusflowError):
    """A delivered message has a name that no handler here knows, or a body that does not
    fit its type. It is dead-lettered at once."""
