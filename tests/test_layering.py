"""The package's layering: contracts at the bottom, implementations above, the CLI on top."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "src" / "busflow"

LAYERS = [
    {"_errors", "_messages", "_uri", "_logs"},
    {"_workflow", "_values"},
    {"_persistence", "_transport", "_timeouts"},
    {"_memory", "_memory_transport", "mongodb", "rabbitmq"},
    {"_bus"},
    {"testing"},
    {"cli"},
]
"""Each busflow subpackage or module, from the bottom up: none imports from a later layer."""


def _layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "busflow" or len(parts) < 2:
        return None
    for index, names in enumerate(LAYERS):
        if parts[1] in names:
            return index
    return None


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found


def test_nothing_imports_from_a_layer_above_it() -> None:
    wrong = []
    for path in SOURCE.rglob("*.py"):
        module = "busflow." + ".".join(path.relative_to(SOURCE).with_suffix("").parts)
        own = _layer_of(module)
        if own is None:
            continue
        for imported in _imports(path):
            if imported == "busflow":  # the public face: only the top layers use it
                if own < LAYERS.index({"testing"}):
                    wrong.append(f"{module} imports the busflow package itself")
                continue
            layer = _layer_of(imported)
            if layer is not None and layer > own:
                wrong.append(f"{module} imports {imported}")
    assert wrong == []


def test_the_cli_and_the_demo_use_only_public_names() -> None:
    wrong = []
    for path in (SOURCE / "cli").glob("*.py"):
        for imported in _imports(path):
            parts = imported.split(".")
            private = any(part.startswith("_") for part in parts[1:])
            if parts[0] == "busflow" and parts[1:2] != ["cli"] and private:
                wrong.append(f"{path.name} imports {imported}")
    assert wrong == []


def test_busflow_inspect_loads_neither_the_demo_nor_the_embedded_server_nor_aio_pika() -> None:
    script = (
        "import sys\n"
        "from busflow.cli import main\n"
        "main(['inspect', '--uri', 'mongodb://127.0.0.1:1/', '--timeout', '0.2'])\n"
        "loaded = ('busflow.cli._demo', 'mongoeco', 'aio_pika', 'busflow.rabbitmq')\n"
        "print(sorted(m for m in sys.modules if m.startswith(loaded)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == "[]", result.stderr
