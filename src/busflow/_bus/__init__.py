"""The bus, split by concept; ``busflow`` re-exports its public names.

``bus`` is the facade and its builder. The parts, in the order a message passes through
them: ``dispatch`` (one delivery, to its settlement), ``routing`` (subscribers by message
name, and the codec), ``ordering`` (per-workflow turns), ``runner`` (workflow start,
continue, and re-reading on conflict), ``context`` (a handler run and its outbox),
``retries`` (what is retried, and when), ``metrics`` and ``tracking``; ``settings`` holds
what the builder fixed.
"""

from busflow._bus.bus import Bus, BusConfiguration
from busflow._bus.metrics import BusMetrics
from busflow._bus.retries import RetryPolicy

__all__ = ["Bus", "BusConfiguration", "BusMetrics", "RetryPolicy"]
