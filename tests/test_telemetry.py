"""OpenTelemetry (busflow[otel]): spans, trace context in the messages, and metrics, read from
the SDK's in-memory exporter and reader."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from busflow import Bus, ConfigurationError, MessageAttributes
from tests.test_bus import Answer, Answerer, Ask, Asker, AskerState


class Telemetry:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def metrics(self) -> dict[str, list[Any]]:
        """Each busflow instrument's data points."""
        data = self.reader.get_metrics_data()
        assert data is not None
        return {
            metric.name: list(metric.data.data_points)
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }


@pytest.fixture
def telemetry() -> Telemetry:
    return Telemetry()


async def run_saga(telemetry: Telemetry) -> tuple[Bus, ReadableSpan, list[str]]:
    """Ask, Request and the Answer reply, inside a span of the caller's (an HTTP request, say)."""
    carried: list[str] = []

    async def overhear(message: Answer, attributes: MessageAttributes) -> None:
        carried.append(attributes.attributes["traceparent"])

    bus = (
        Bus.configure()
        .with_workflow(Asker)
        .with_workflow(Answerer)
        .with_handler(Answer, overhear)
        .with_opentelemetry(
            tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
        )
        .build()
    )
    tracer = telemetry.tracer_provider.get_tracer("the caller")
    async with bus:
        with tracer.start_as_current_span("POST /questions"):
            await bus.send(Ask(question="patient"))
        await bus.wait_until_idle(timeout=5)
    [root] = [
        span for span in telemetry.spans.get_finished_spans() if span.name == "POST /questions"
    ]
    return bus, root, carried


async def test_a_sagas_messages_form_one_trace_with_a_span_per_handler(
    telemetry: Telemetry,
) -> None:
    bus, root, carried = await run_saga(telemetry)

    spans = telemetry.spans.get_finished_spans()
    assert root.context is not None
    trace_id = root.context.trace_id
    assert {span.context.trace_id for span in spans if span.context} == {trace_id}
    deliveries = [span for span in spans if span.kind is SpanKind.CONSUMER]
    assert sorted(span.name for span in deliveries) == sorted(
        f"process {name}"
        for name in (Ask.message_name, "tests.test_bus.Request", Answer.message_name)
    )
    ids = {span.context.span_id for span in spans if span.context}
    assert all(span.parent is not None and span.parent.span_id in ids for span in deliveries)
    [answered] = [span for span in spans if span.name == "Asker.answered"]
    [asker] = await bus.find_workflows(AskerState, "answer", "re: patient")
    assert answered.attributes is not None
    assert answered.attributes["busflow.workflow.name"] == "test/asker"
    assert answered.attributes["busflow.workflow.id"] == asker.workflow_id
    [traceparent] = carried
    assert traceparent.split("-")[1] == f"{trace_id:032x}"


async def test_the_bus_counts_and_times_its_work_as_metrics(telemetry: Telemetry) -> None:
    await run_saga(telemetry)

    metrics = telemetry.metrics()
    counted = {
        name: [point.value for point in points]
        for name, points in metrics.items()
        if name != "busflow.handler.duration"
    }
    assert counted == {
        "busflow.messages.delivered": [3],
        "busflow.handler.runs": [4],
        "busflow.conflicts": [0],
        "busflow.retries": [0],
        "busflow.dead_letters": [0],
    }
    timed = {
        point.attributes["busflow.handler"]: point.count
        for point in metrics["busflow.handler.duration"]
    }
    assert timed == {
        "Asker.ask": 1,
        "Answerer.requested": 1,
        "Asker.answered": 1,
        "run_saga.<locals>.overhear": 1,
    }


async def test_without_opentelemetry_messages_carry_no_trace_context() -> None:
    carried: list[dict[str, Any]] = []

    async def overhear(message: Answer, attributes: MessageAttributes) -> None:
        carried.append(dict(attributes.attributes))

    bus = (
        Bus.configure()
        .with_workflow(Asker)
        .with_workflow(Answerer)
        .with_handler(Answer, overhear)
        .build()
    )
    async with bus:
        await bus.send(Ask(question="patient"))
        await bus.wait_until_idle(timeout=5)

    [attributes] = carried
    assert "traceparent" not in attributes


def test_without_the_otel_extra_asking_for_opentelemetry_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "busflow._bus.otel", None)  # as if OpenTelemetry were absent

    with pytest.raises(ConfigurationError, match=r'pip install "busflow\[otel\]"'):
        Bus.configure().with_opentelemetry()
