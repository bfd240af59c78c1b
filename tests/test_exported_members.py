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
    for name in busflow.__all__:
        assert getattr(busflow, name).__module__.startswith("busflow.")
