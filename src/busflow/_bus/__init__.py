"""The bus, split by concept; ``busflow`` re-exports its public names.

``bus`` is the facade and its builder. The parts, in the order a message passes through
them: ``dispatch`` (one delivery, to its settlement) and ``handling`` (its units and their
outcomes), ``routing`` (subscribers by message name, and the codec), ``ordering``
(per-workflow turns), ``runner`` (workflow start, continue, and re-reading on conflict),
``context`` (a handler run and what it sends), ``outbox`` (sent messages saved with the
state, dispatched, cleared and rescued), ``retries`` (what is retried, and when),
``timeouts`` (delayed messages and their poller), ``metrics``, ``tracking`` (what
``wait_until_idle`` waits for) and ``telemetry`` (with ``otel``, its OpenTelemetry side);
``settings`` holds what the builder fixed.
"""

from busflow._bus.bus import Bus, BusConfiguration
from busflow._bus.metrics import BusMetrics
from busflow._bus.retries import RetryPolicy

__all__ = ["Bus", "BusConfiguration", "BusMetrics", "RetryPolicy"]
