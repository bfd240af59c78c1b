"""An order saga on MongoDB, end to end: ``python examples/order_saga.py [--uri URI]``.

The code lives in the package, in ``src/busflow/cli/_demo.py``, so that the installed ``busflow
demo`` command runs exactly this example; read it there. It runs an order workflow on
``MongoPersistence``: orders are placed, items arrive in messages that race each other, one
order is paid, shipped and completed, and the other is left running. Then it prints the
stored documents as relaxed Extended JSON and the mongo shell commands that show them.

Without ``--uri`` or ``MONGODB_URI`` it runs on an embedded, in-process server, so it needs
no MongoDB.
"""

from busflow.cli import demo_main as main

if __name__ == "__main__":
    raise SystemExit(main())
