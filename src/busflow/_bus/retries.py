"""When a failed message is handled again, and after how long."""

from __future__ import annotations

import random
from dataclasses import dataclass

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from busflow._errors import ConfigurationError

__all__ = ["RetryPolicy", "is_retryable"]


@dataclass(frozen=True)
class RetryPolicy:
    """How a message whose handling failed is handled again.

    A failure that could pass next time hands the message back to the transport, which
    redelivers it after ``min(max_delay, base_delay * 2 ** (attempt - 1))`` seconds, scaled by
    a random factor between 0.5 and 1.5; no worker waits meanwhile. After ``max_attempts``
    deliveries, or at once for a failure that can only recur, the message is dead-lettered.

    Version conflicts are not failures of the message: the workflow is re-read and the
    handler re-run on the spot, for as long as other saves keep moving the workflow on. Only
    ``max_stalled_conflicts`` conflicts in a row that find the workflow where it was (a
    persistence that cannot save, not contention) fail the message.
    """

    max_attempts: int = 10
    base_delay: float = 0.005
    max_delay: float = 0.5
    max_stalled_conflicts: int = 100

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(
                f"RetryPolicy.max_attempts must be >= 1, not {self.max_attempts}"
            )
        if self.max_stalled_conflicts < 1:
            raise ConfigurationError(
                f"RetryPolicy.max_stalled_conflicts must be >= 1, not {self.max_stalled_conflicts}"
            )
        if self.base_delay < 0 or self.max_delay < 0:
            raise ConfigurationError("RetryPolicy delays must not be negative")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (from 1)."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return ceiling * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not security


def is_retryable(error: BaseException) -> bool:
    """Whether handling the message again could end otherwise.

    busflow's errors say so in ``retryable``; a pydantic validation or serialization error
    would recur; any other exception may be transient unless its class sets
    ``retryable = False``.
    """
    if isinstance(error, ValidationError | PydanticSerializationError):
        return False
    retryable = getattr(error, "retryable", True)
    return retryable if isinstance(retryable, bool) else True
