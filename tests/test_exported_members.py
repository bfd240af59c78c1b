import busflow


def test_the_public_api_changes_only_on_purpose() -> None:
    assert busflow.__all__ == sorted(busflow.__all__)
    assert busflow.__all__ == [
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
    for name in busflow.__all__:
        assert getattr(busflow, name).__module__ == "busflow"
