"""The examples the README points to run as written."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import httpx

ROOT = Path(__file__).resolve().parent.parent


def test_the_quick_start_prints_a_completed_workflow() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    state = json.loads(result.stdout)
    assert state["workflow_status"] == "complete"
    assert state["paid"] is True
    assert state["workflow_version"] == 2


def test_the_loan_example_declines_the_loan_whose_credit_check_timed_out() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "loan_timeout.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    first, second, ignored = result.stdout.splitlines()
    assert json.loads(first) == {
        "loan_id": "loan-1",
        "decision": "approved",
        "workflow_status": "complete",
    }
    assert json.loads(second) == {
        "loan_id": "loan-2",
        "decision": "declined: the credit check never answered",
        "workflow_status": "complete",
    }
    assert ignored == "timeouts ignored (their loan was complete): 1"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / name)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_fastapi_example_shows_a_workflows_state() -> None:
    example = load_example("fastapi_service.py")
    transport = httpx.ASGITransport(app=example.app)
    async with (
        example.app.router.lifespan_context(example.app),
        httpx.AsyncClient(transport=transport, base_url="http://service") as client,
    ):
        placed = await client.post("/orders/o-1")
        await example.bus.wait_until_idle(timeout=5)
        by_order = await client.get("/orders/o-1")
        missing = await client.get("/orders/o-2")
        workflow_id = by_order.json()["workflow_id"]
        by_id = await client.get(f"/workflows/{workflow_id}")

    assert placed.status_code == 202
    assert by_order.status_code == 200
    assert by_order.json() == {
        "workflow_id": workflow_id,
        "workflow_version": 1,
        "workflow_status": "running",
        "order_id": "o-1",
    }
    assert by_id.json() == by_order.json()
    assert missing.status_code == 404
