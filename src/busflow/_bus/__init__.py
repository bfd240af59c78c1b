"""The bus, split by concept; ``busflow`` re-exports its public names."""

from busflow._bus.bus import Bus, BusConfiguration, BusMetrics, DeadLetter, RetryPolicy

__all__ = ["Bus", "BusConfiguration", "BusMetrics", "DeadLetter", "RetryPolicy"]
