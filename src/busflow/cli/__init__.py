"""The ``busflow`` command: read-only operator commands, and the order saga demo.

``main(argv)`` runs the command line and returns its exit status; ``demo_main(argv)`` runs
the order saga example on its own (``examples/order_saga.py``).
"""

from busflow.cli._main import main


def demo_main(argv: list[str] | None = None) -> int:
    """``python examples/order_saga.py [--uri URI] [--database DB]``."""
    from busflow.cli._demo import main as run_demo

    return run_demo(argv)


__all__ = ["demo_main", "main"]
