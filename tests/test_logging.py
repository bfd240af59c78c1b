"""What busflow's log records say: structured fields, and handler start and finish lines."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pydantic import BaseModel

from busflow import (
    Bus,
    BusConfiguration,
    CoreDependencies,
    Message,
    MessageAttributes,
    MessageWorkflowMapping,
    RetryPolicy,
    Workflow,
    WorkflowMapper,
    WorkflowState,
)

FIELDS = ("workflow_name", "workflow_id", "message_name", "message_id", "correlation_id")


class Placed(Message):
    message_name = "test-logging.Placed"
    order_id: str


class Pack(Message):
    message_name = "test-logging.Pack"
    order_id: str


class LoggedOrder(WorkflowState):
    workflow_name = "test-logging/order"

    order_id: str = ""


class LoggedWorkflow(Workflow[LoggedOrder]):
    def configure_workflow(self, mapper: WorkflowMapper[LoggedOrder]) -> None:
        mapper.with_state(LoggedOrder).started_by(Placed, self.placed)

    async def placed(self, message: Placed, state: LoggedOrder, _: MessageAttributes) -> Any:
        logging.getLogger("busflow.bus").info("placed, from inside the handler")
        await self.bus.send(Pack(order_id=message.order_id))
        return {"order_id": message.order_id}


async def pack(message: Pack, attributes: MessageAttributes) -> None:
    pass


async def run(bus: Bus) -> LoggedOrder:
    async with bus:
        await bus.send(
            Placed(order_id="o-1"), MessageAttributes(message_id="m-1", correlation_id="c-1")
        )
        await bus.wait_until_idle(timeout=5)
    [order] = await bus.find_workflows(LoggedOrder, "order_id", "o-1")
    return order


def busflow_bus(**core: Any) -> Bus:
    configuration = Bus.configure().with_workflow(LoggedWorkflow).with_handler(Pack, pack)
    if core:
        configuration = configuration.with_core_dependencies(CoreDependencies(**core))
    return configuration.build()


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS}


async def test_every_busflow_record_carries_the_fields(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="busflow"):
        order = await run(busflow_bus())

    records = [record for record in caplog.records if record.name.startswith("busflow")]
    assert records
    assert all(set(FIELDS) <= record.__dict__.keys() for record in records)
    [inside] = [r for r in records if r.getMessage() == "placed, from inside the handler"]
    assert fields_of(inside) == {
        "workflow_name": "test-logging/order",
        "workflow_id": order.workflow_id,
        "message_name": "test-logging.Placed",
        "message_id": "m-1",
        "correlation_id": "c-1",
    }


async def test_handlers_log_their_start_and_finish_with_durations_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="busflow"):
        order = await run(busflow_bus())

    lines = [
        record
        for record in caplog.records
        if record.getMessage().startswith(("LoggedWorkflow.placed ", "pack "))
    ]
    assert [line.getMessage().split()[1] for line in lines] == [
        "started",
        "finished",
        "started",
        "finished",
    ]
    assert all(line.levelno == logging.DEBUG for line in lines)
    _, finished, _, packed = lines
    assert finished.__dict__["duration_ms"] >= 0
    assert packed.__dict__["duration_ms"] >= 0
    assert fields_of(finished)["workflow_id"] == order.workflow_id
    assert fields_of(packed)["message_name"] == "test-logging.Pack"
    assert fields_of(packed)["correlation_id"] == "c-1"


async def test_loggers_from_a_logger_factory_of_yours_carry_the_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def mine(name: str) -> logging.Logger:
        return logging.getLogger(f"mine.{name}")

    with caplog.at_level(logging.DEBUG, logger="mine"):
        order = await run(busflow_bus(logger_factory=mine))

    finished = [
        record
        for record in caplog.records
        if record.name == "mine.busflow.bus"
        and "LoggedWorkflow.placed finished" in record.getMessage()
    ]
    assert [fields_of(record)["workflow_id"] for record in finished] == [order.workflow_id]


PERSONAL_NUMBER = "19121212-1212"


class Applicant(BaseModel):
    personal_number: int  # a wrong type: validating the text fails, quoting it


class Applied(Message):
    message_name = "test-logging.Applied"
    personal_number: str


class Reviewed(Message):
    message_name = "test-logging.Reviewed"
    personal_number: str


class Application(WorkflowState):
    workflow_name = "test-logging/application"

    personal_number: str = ""


class ApplicationWorkflow(Workflow[Application]):
    def configure_workflow(self, mapper: WorkflowMapper[Application]) -> None:
        mapper.with_state(Application).started_by(Applied, self.applied).when(
            Reviewed,
            self.reviewed,
            MessageWorkflowMapping(
                lookup=lambda message, _: message.personal_number, maps_to="personal_number"
            ),
        )

    async def applied(self, message: Applied, state: Application, _: MessageAttributes) -> Any:
        Applicant.model_validate({"personal_number": message.personal_number})
        return {"personal_number": message.personal_number}

    async def reviewed(self, message: Reviewed, state: Application, _: MessageAttributes) -> Any:
        return self.complete_workflow()


async def run_application(bus: Bus) -> None:
    async with bus:
        await bus.send(Applied(personal_number=PERSONAL_NUMBER))  # fails validation
        await bus.send(Reviewed(personal_number=PERSONAL_NUMBER))  # finds no workflow
        await bus.wait_until_idle(timeout=5)


def application_bus() -> BusConfiguration:
    return (
        Bus.configure()
        .with_workflow(ApplicationWorkflow)
        .with_retry_policy(RetryPolicy(max_attempts=1))
    )


async def test_no_line_at_info_or_above_shows_a_value_of_a_state_or_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = application_bus().build()
    with caplog.at_level(logging.INFO, logger="busflow"):
        await run_application(bus)

    lines = [caplog.handler.format(record) for record in caplog.records]
    assert len(bus.dead_letters) == 1
    assert bus.metrics.unmatched == 1
    assert not [line for line in lines if PERSONAL_NUMBER in line]
    [dead_letter] = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert "personal_number: Input should be a valid integer" in dead_letter.getMessage()
    assert "input_value" not in dead_letter.getMessage()
    assert PERSONAL_NUMBER in bus.dead_letters[0].error_text  # the dead letter keeps it


async def test_values_show_in_log_lines_when_the_bus_is_told_to(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = application_bus().with_values_in_logs().build()
    with caplog.at_level(logging.INFO, logger="busflow"):
        await run_application(bus)

    shown = [record for record in caplog.records if PERSONAL_NUMBER in record.getMessage()]
    assert [record.levelname for record in shown] == ["ERROR", "INFO"]
