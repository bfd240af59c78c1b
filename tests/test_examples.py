"""The examples the README points to run as written."""

import json
import subprocess
import sys
from pathlib import Path

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
