"""An embedded MongoDB-compatible server, for demos and tests where no MongoDB runs.

It is mongoeco's wire-protocol server (``pip install "mongoeco[wire]"``, CPython 3.13+),
which speaks the real MongoDB protocol to the real PyMongo driver. It is not MongoDB: use it
to try busflow, never to judge MongoDB's speed or keep data you care about.

``python -m busflow.mongodb._embedded`` serves until killed and prints its URI on the first
line of standard output.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from types import TracebackType
from typing import Any, Self

__all__ = ["EmbeddedServer", "embedded_server_available"]


def embedded_server_available() -> bool:
    """Whether mongoeco's wire server can be imported here."""
    try:
        import mongoeco.wire  # noqa: F401
    except ImportError:
        return False
    return True


class EmbeddedServer:
    """mongoeco's wire server on 127.0.0.1, served from a background thread of this process.

    ``with EmbeddedServer() as server: MongoPersistence(server.uri, ...)``. Its data lives in
    memory and is gone when it stops.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self.uri = ""

    def start(self) -> str:
        from mongoeco.wire import AsyncMongoEcoProxyServer

        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = AsyncMongoEcoProxyServer()
                address = loop.run_until_complete(self._server.start())
                self.uri = address.uri
            except BaseException as error:  # handed to the caller of start()
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._server.close())
            loop.close()

        self._thread = threading.Thread(target=serve, name="busflow-embedded-mongo", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self.uri

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


async def _serve_forever() -> None:
    from mongoeco.wire import AsyncMongoEcoProxyServer

    server = AsyncMongoEcoProxyServer()
    address = await server.start()
    print(address.uri, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()


def main() -> None:
    if not embedded_server_available():
        print(
            'the embedded server needs mongoeco: pip install "mongoeco[wire]" (CPython 3.13+)',
            file=sys.stderr,
        )
        raise SystemExit(2)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever())


if __name__ == "__main__":
    main()
