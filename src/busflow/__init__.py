"""busflow: durable workflow (saga) state in MongoDB, and the async message bus it runs on."""

from busflow._bus import Bus, BusConfiguration, BusMetrics, RetryPolicy
from busflow._errors import (
    BusError,
    BusflowError,
    BusIdleTimeoutError,
    BusNotRunningError,
    ConfigurationError,
    HandlerResultError,
    InvalidLookupValueError,
    InvalidStateValueError,
    MessageDecodeError,
    PersistenceConnectionError,
    PersistenceError,
    StoredStateError,
    WorkflowConcurrencyError,
    WorkflowUniquenessError,
)
from busflow._memory import InMemoryPersistence
from busflow._memory_transport import MemoryTransport
from busflow._messages import Message, MessageAttributes
from busflow._persistence import CoreDependencies, Persistence
from busflow._timeouts import ClaimedMessage, ScheduledMessage, TimeoutStore
from busflow._transport import DeadLetter, Delivery, Subscription, Transport, TransportMessage
from busflow._workflow import (
    MessageWorkflowMapping,
    OutboxMessage,
    Workflow,
    WorkflowAddress,
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
    "ClaimedMessage",
    "ConfigurationError",
    "CoreDependencies",
    "DeadLetter",
    "Delivery",
    "HandlerResultError",
    "InMemoryPersistence",
    "InvalidLookupValueError",
    "InvalidStateValueError",
    "MemoryTransport",
    "Message",
    "MessageAttributes",
    "MessageDecodeError",
    "MessageWorkflowMapping",
    "OutboxMessage",
    "Persistence",
    "PersistenceConnectionError",
    "PersistenceError",
    "RetryPolicy",
    "ScheduledMessage",
    "StoredStateError",
    "Subscription",
    "TimeoutStore",
    "Transport",
    "TransportMessage",
    "Workflow",
    "WorkflowAddress",
    "WorkflowConcurrencyError",
    "WorkflowMapper",
    "WorkflowState",
    "WorkflowStatus",
    "WorkflowUniquenessError",
]

# Public names report the package as their home, as httpx does: "busflow.StoredStateError"
# in tracebacks and dead letters, not the private module that defines it.
for _name in __all__:
    globals()[_name].__module__ = "busflow"
del _name
