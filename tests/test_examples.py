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
