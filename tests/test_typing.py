"""What mypy --strict says about code that uses busflow: mistakes are errors, and what the
runtime accepts type-checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PREAMBLE = """
from typing import Any

from busflow import (
    Message, MessageAttributes, MessageWorkflowMapping, Workflow, WorkflowMapper, WorkflowState
)


class Placed(Message):
    order_id: str


class Paid(Message):
    order_id: str
    amount: int


class Order(WorkflowState):
    workflow_name = "typing/order"

    order_id: str = ""
    amount: int = 0
"""


def mypy(tmp_path: Path, code: str) -> list[str]:
    """The errors mypy --strict reports on ``code``, after the preamble."""
    module = tmp_path / "snippet.py"
    module.write_text(PREAMBLE + code)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(module)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    return [line for line in result.stdout.splitlines() if ": error:" in line]


@pytest.mark.parametrize("register", ["started_by(Placed, self.paid)", "when(Placed, self.paid)"])
def test_a_handler_for_another_message_type_is_a_type_error(tmp_path: Path, register: str) -> None:
    errors = mypy(
        tmp_path,
        f"""
class OrderWorkflow(Workflow[Order]):
    def configure_workflow(self, mapper: WorkflowMapper[Order]) -> None:
        mapper.with_state(Order).{register}

    async def paid(self, message: Paid, state: Order, _: MessageAttributes) -> dict[str, Any]:
        return {{"amount": message.amount}}
""",
    )

    assert len(errors) == 1, errors
    assert "Argument 2 to" in errors[0]
    assert 'expected "Callable[[Placed, Order, MessageAttributes]' in errors[0]


def test_a_lookup_may_return_any_scalar_the_runtime_accepts(tmp_path: Path) -> None:
    errors = mypy(
        tmp_path,
        """
BY_AMOUNT: MessageWorkflowMapping[Paid, Order] = MessageWorkflowMapping(
    lookup=lambda message, _: message.amount, maps_to="amount"
)
""",
    )

    assert errors == []


def test_the_examples_pass_mypy_strict() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "examples"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stdout


def test_a_synchronous_client_is_a_type_error(tmp_path: Path) -> None:
    errors = mypy(
        tmp_path,
        """
from pymongo import AsyncMongoClient, MongoClient

from busflow.mongodb import MongoPersistence

MongoPersistence(client=AsyncMongoClient("mongodb://localhost/"))
MongoPersistence(client=MongoClient("mongodb://localhost/"))
""",
    )

    assert len(errors) == 1, errors
    assert 'Argument "client" to "MongoPersistence"' in errors[0]
