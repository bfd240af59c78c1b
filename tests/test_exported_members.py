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


def test_the_rabbitmq_api_changes_only_on_purpose() -> None:
    import busflow.rabbitmq as rabbitmq

    assert rabbitmq.__all__ == sorted(rabbitmq.__all__)
    assert rabbitmq.__all__ == [
        "DEFAULT_RETRY_DELAYS",
        "DeadLetterQueue",
        "QueueType",
        "RabbitMQConnectionError",
        "RabbitMQError",
        "RabbitMQTopologyError",
        "RabbitMQTransport",
        "UnroutableMessageError",
        "hosts_of",
        "mask_password",
        "redact_uri",
    ]
    for name in ("DeadLetterQueue", "RabbitMQTransport", "RabbitMQError"):
        assert getattr(rabbitmq, name).__module__ == "busflow.rabbitmq"
