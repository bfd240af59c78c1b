"""busflow: durable workflow (saga) state in MongoDB, and the async message bus it runs on."""

from busflow.bus import Bus, BusConfiguration, BusMetrics, DeadLetter, RetryPolicy
from busflow.errors import (
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
from busflow.memory import InMemoryPersistence
from busflow.messages import Message, MessageAttributes
from busflow.persistence import CoreDependencies, Persistence
from busflow.workflow import (
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
