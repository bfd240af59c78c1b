"""What a bus reports to a tracing and metrics system: nothing, unless it is given one.

``Telemetry`` is the seam; ``NoTelemetry`` is the default, and ``busflow._bus.otel`` reports
to OpenTelemetry (``BusConfiguration.with_opentelemetry``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from busflow._bus.metrics import BusMetrics
from busflow._transport import TransportMessage

__all__ = ["NoTelemetry", "Telemetry", "TelemetryFactory"]


class Telemetry(Protocol):
    def delivery(self, message: TransportMessage) -> AbstractContextManager[None]:
        """Around the handling of one delivery, continuing the trace the message carries."""

    def handler_run(
        self, handler: str, workflow_name: str | None, workflow_id: str | None
    ) -> AbstractContextManager[None]:
        """Around one run of a handler, on a workflow or (a plain handler, both ``None``)
        none."""

    def carry(self, message: TransportMessage) -> TransportMessage:
        """``message`` carrying the current trace context in its attributes."""


TelemetryFactory = Callable[[BusMetrics], Telemetry]
"""Makes a bus's telemetry, given the counters it keeps."""


_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()
"""A block that does nothing; a ``nullcontext`` may be entered any number of times."""


class NoTelemetry:
    """Reports nothing, at no cost."""

    def delivery(self, message: TransportMessage) -> AbstractContextManager[None]:
        return _NOTHING

    def handler_run(
        self, handler: str, workflow_name: str | None, workflow_id: str | None
    ) -> AbstractContextManager[None]:
        return _NOTHING

    def carry(self, message: TransportMessage) -> TransportMessage:
        return message
