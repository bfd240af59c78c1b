"""``BusMetrics``: what a bus counts as it works."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BusMetrics"]


@dataclass
class BusMetrics:
    """Counters since the bus was built; read them to see how the bus is doing."""

    messages_delivered: int = 0
    """Deliveries taken from the transport, redeliveries included."""
    handler_runs: int = 0
    """Handler invocations, re-runs after a version conflict included."""
    conflicts: int = 0
    """Saves that raised ``WorkflowConcurrencyError``; each re-reads the state and re-runs."""
    retries: int = 0
    """Messages handed back to the transport for redelivery after a failure."""
    dead_letters: int = 0
    unmatched: int = 0
    """Messages for a workflow that found no running state and were ignored."""
    replies_unmatched: int = 0
    """Of those, messages that one workflow sent to another (``reply``,
    ``reply_to_originator``) and that found it no longer running; each is logged at WARNING."""
    duplicate_starts: int = 0
    """Starts refused by a uniqueness rule (``unique_running``), or whose workflow already
    exists, ignored."""
    timeouts_ignored: int = 0
    """Delayed messages (timeouts) that arrived once their workflow was no longer running."""
    duplicates: int = 0
    """Deliveries of a message that its workflow had applied already: not applied again."""
    coalesced: int = 0
    """Messages run in another message's batch, on its state in memory, and saved with it."""
    state_cache_hits: int = 0
    """States taken from the state cache instead of read from the persistence."""
