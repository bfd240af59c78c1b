"""Telemetry for OpenTelemetry (``pip install "busflow[otel]"``).

A span for each delivery (a consumer span that continues the trace whose context the message
carries in its attributes, W3C ``traceparent``), a child span for each handler run with the
workflow's name and id, the trace context injected into every message the bus sends, the
bus's counters as observable counters, and a histogram of handler durations.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager

from opentelemetry import metrics, propagate, trace
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.trace import SpanKind, TracerProvider

from busflow._bus.metrics import BusMetrics
from busflow._transport import TransportMessage

__all__ = ["COUNTERS", "OpenTelemetry"]

SCOPE = "busflow"

COUNTERS = {
    "busflow.messages.delivered": ("messages_delivered", "deliveries, redeliveries included"),
    "busflow.handler.runs": ("handler_runs", "handler runs, re-runs after a conflict included"),
    "busflow.conflicts": ("conflicts", "saves that lost a race and were re-run"),
    "busflow.retries": ("retries", "messages handed back for redelivery after a failure"),
    "busflow.dead_letters": ("dead_letters", "messages dead-lettered"),
}
"""The instrument names, the ``BusMetrics`` counter each reports, and its description."""


class OpenTelemetry:
    """Reports a bus's work to OpenTelemetry: the global providers unless given others."""

    def __init__(
        self,
        counters: BusMetrics,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        meter = (meter_provider or metrics.get_meter_provider()).get_meter(SCOPE)
        for name, (counter, description) in COUNTERS.items():
            meter.create_observable_counter(
                name, callbacks=[_observe(counters, counter)], description=description
            )
        self._durations = meter.create_histogram(
            "busflow.handler.duration", unit="ms", description="how long each handler run took"
        )

    def delivery(self, message: TransportMessage) -> AbstractContextManager[None]:
        return self._delivery(message)

    @contextmanager
    def _delivery(self, message: TransportMessage) -> Iterator[None]:
        attributes: dict[str, str | int] = {
            "messaging.system": "busflow",
            "messaging.operation.type": "process",
            "messaging.destination.name": message.name,
            "messaging.message.id": message.message_id,
            "busflow.attempt": message.attempt,
        }
        if message.correlation_id is not None:
            attributes["messaging.message.conversation_id"] = message.correlation_id
        carried = {key: str(value) for key, value in message.attributes.items()}
        with self._tracer.start_as_current_span(
            f"process {message.name}",
            context=propagate.extract(carried),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ):
            yield

    def handler_run(
        self, handler: str, workflow_name: str | None, workflow_id: str | None
    ) -> AbstractContextManager[None]:
        return self._handler_run(handler, workflow_name, workflow_id)

    @contextmanager
    def _handler_run(
        self, handler: str, workflow_name: str | None, workflow_id: str | None
    ) -> Iterator[None]:
        attributes = {"busflow.handler": handler}
        if workflow_name is not None and workflow_id is not None:
            attributes["busflow.workflow.name"] = workflow_name
            attributes["busflow.workflow.id"] = workflow_id
        started = time.perf_counter()
        try:
            with self._tracer.start_as_current_span(handler, attributes=attributes):
                yield
        finally:
            duration_ms = (time.perf_counter() - started) * 1000
            self._durations.record(duration_ms, {"busflow.handler": handler})

    def carry(self, message: TransportMessage) -> TransportMessage:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if not carrier:
            return message
        return message._replace(attributes={**message.attributes, **carrier})


def _observe(
    counters: BusMetrics, counter: str
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    """A callback that reads one of the bus's counters."""

    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(getattr(counters, counter))]

    return observe
