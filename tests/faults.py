"""A TCP proxy in front of a MongoDB wire server that injects faults into chosen commands.

It reads MongoDB's wire protocol (OP_MSG) in both directions. For a command that ``plan``
picks, it either forwards the request and then loses the reply (the write happened, the
client never hears of it), loses the request (nothing happened), or holds the reply for
longer than the client waits (a stall). Either way the client's connection is cut, as a
network blip or a failover would cut it. It can also answer a command as MongoDB answers one
on a collection that does not exist (NamespaceNotFound), which mongoeco does not do for
``listIndexes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import bson

OP_MSG = 2013
HEADER = struct.Struct("<iiii")  # messageLength, requestID, responseTo, opCode


class Fault(enum.Enum):
    LOSE_REPLY = "lose the reply"
    LOSE_REQUEST = "lose the request"
    STALL = "stall past the client's timeout"
    NAMESPACE_NOT_FOUND = "answer NamespaceNotFound (code 26), keeping the connection"


@dataclass
class FaultLog:
    injected: dict[Fault, int] = field(default_factory=lambda: dict.fromkeys(Fault, 0))
    commands: dict[str, int] = field(default_factory=dict)
    """Faults by command name."""

    @property
    def total(self) -> int:
        return sum(self.injected.values())


Plan = Callable[[str, dict[str, Any]], Fault | None]
"""Given a command's name and body, the fault to inject, or None to pass it on."""


def command_of(message: bytes) -> tuple[str, dict[str, Any]] | None:
    """The command name and body of an OP_MSG request, or None for anything else."""
    _, _, _, op_code = HEADER.unpack_from(message)
    if op_code != OP_MSG:
        return None
    offset = HEADER.size + 4  # flagBits
    while offset < len(message):
        kind = message[offset]
        offset += 1
        (size,) = struct.unpack_from("<i", message, offset)
        if kind == 0:
            body = bson.decode(message[offset : offset + size])
            return next(iter(body)), body
        offset += size
    return None


def namespace_not_found(reply: bytes) -> bytes:
    """The reply replaced by MongoDB's answer for a collection that does not exist."""
    request_id, responds_to = struct.unpack_from("<ii", reply, 4)
    error = {"ok": 0.0, "errmsg": "ns does not exist", "code": 26, "codeName": "NamespaceNotFound"}
    payload = struct.pack("<i", 0) + b"\x00" + bson.encode(error)  # flagBits, a body section
    return HEADER.pack(HEADER.size + len(payload), request_id, responds_to, OP_MSG) + payload


async def _read_message(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(HEADER.size)
    (length,) = struct.unpack_from("<i", header)
    return header + await reader.readexactly(length - HEADER.size)


class FaultProxy:
    """``async with FaultProxy(host, port, plan) as proxy``: connect clients to ``proxy.uri``."""

    def __init__(self, host: str, port: int, plan: Plan, *, stall_seconds: float = 2.0) -> None:
        self._upstream = (host, port)
        self.plan = plan
        self.log = FaultLog()
        self._stall_seconds = stall_seconds
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            server_in, server_out = await asyncio.open_connection(*self._upstream)
        except OSError:
            client_out.close()
            self._tasks.discard(task)
            return
        doomed: dict[int, Fault] = {}
        try:
            async with _closing(client_out), _closing(server_out):
                upstream = asyncio.create_task(self._replies(server_in, client_out, doomed))
                try:
                    while True:
                        request = await _read_message(client_in)
                        fault = self._fault_for(request)
                        if fault is Fault.LOSE_REQUEST:
                            return  # never forwarded; the client's connection is cut
                        if fault is not None:
                            (request_id,) = struct.unpack_from("<i", request, 4)
                            doomed[request_id] = fault
                        server_out.write(request)
                        await server_out.drain()
                finally:
                    upstream.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await upstream
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)

    def _fault_for(self, request: bytes) -> Fault | None:
        command = command_of(request)
        if command is None:
            return None
        name, body = command
        fault = self.plan(name, body)
        if fault is not None:
            self.log.injected[fault] += 1
            self.log.commands[name] = self.log.commands.get(name, 0) + 1
        return fault

    async def _replies(
        self,
        server_in: asyncio.StreamReader,
        client_out: asyncio.StreamWriter,
        doomed: dict[int, Fault],
    ) -> None:
        while True:
            reply = await _read_message(server_in)
            (responds_to,) = struct.unpack_from("<i", reply, 8)
            fault = doomed.pop(responds_to, None)
            if fault is Fault.NAMESPACE_NOT_FOUND:
                reply = namespace_not_found(reply)
            elif fault is not None:
                if fault is Fault.STALL:
                    await asyncio.sleep(self._stall_seconds)
                client_out.close()  # the reply is lost with the connection
                return
            client_out.write(reply)
            await client_out.drain()


@contextlib.asynccontextmanager
async def _closing(writer: asyncio.StreamWriter) -> AsyncIterator[None]:
    try:
        yield
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
