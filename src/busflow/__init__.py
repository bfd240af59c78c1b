"""busflow: durable workflow (saga) state in MongoDB, and the async message bus it runs on."""

from busflow._bus import Bus, BusConfiguration, BusMetrics, DeadLetter, RetryPolicy
from busflow._errors import (
    BusError,
    BusflowError,
    BusIdleTimeoutError,
    BusNotRunningError,
    ConfigurationError,
    InvalidLookupValueError,
    InvalidStateValueError,
    PersistenceConnectionError,
    PersistenceError,
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
    WorkflowState,
    WorkflowStatus,
)

__all__ = [
    "Bus",
    "BusConfiguration",
    "BusError",
    "BusIdleTimeoutError",
    "BusMetrics",
    "BusNotRunningError",
    "BusflowError",
    "ConfigurationError",
    "CoreDependencies",
    "DeadLetter",
    "InMemoryPersistence",
    "InvalidLookupValueError",
    "InvalidStateValueError",
    "Message",
    "MessageAttributes",
    "MessageWorkflowMapping",
    "Persistence",
    "PersistenceConnectionError",
    "PersistenceError",
    "RetryPolicy",
    "StoredStateError",
    "Workflow",
    "WorkflowConcurrencyError",
    "WorkflowMapper",
    "WorkflowState",
    "WorkflowStatus",
    "WorkflowUniquenessError",
]
