"""``BusSettings``: what a bus is built from, fixed once by ``BusConfiguration``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from busflow._bus.retries import RetryPolicy
from busflow._bus.routing import MessageHandler
from busflow._bus.telemetry import TelemetryFactory
from busflow._bus.timeouts import TimeoutPolling
from busflow._messages import Message
from busflow._persistence import CoreDependencies, Persistence
from busflow._transport import Transport
from busflow._workflow import Workflow

__all__ = ["BusSettings"]


@dataclass(frozen=True)
class BusSettings:
    """Everything a bus is built from; fixed when it is built."""

    persistence: Persistence
    transport: Transport
    workflows: tuple[Workflow[Any], ...]
    handlers: tuple[tuple[type[Message], MessageHandler], ...]
    concurrency: int
    retry_policy: RetryPolicy
    core_dependencies: CoreDependencies
    dispose_timeout: float
    per_workflow_order: bool
    applied_limit: int
    timeout_polling: TimeoutPolling
    state_cache_size: int = 1_000
    """How many workflows' last saved states the bus keeps; 0 keeps none."""
    coalescing: bool = True
    """Whether messages waiting for one workflow run in one batch, saved once."""
    values_in_logs: bool = False
    """Whether log lines at INFO and above may show values of states and messages."""
    telemetry: TelemetryFactory | None = None
    """Makes what the bus reports to tracing and metrics; ``None`` reports nothing."""
