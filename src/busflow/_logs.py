"""The fields that every busflow log record carries, taken from what is being handled.

Each record that a busflow logger makes gets the attributes ``workflow_name``,
``workflow_id``, ``message_name``, ``message_id`` and ``correlation_id`` (``None`` where they
are unknown), so a formatter or a JSON handler can use them: ``%(workflow_id)s``. The bus sets
them while it handles a message and runs a workflow's handler; a field given in ``extra=``
wins.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from typing import Protocol

from pydantic import ValidationError

from busflow._errors import BusflowError

__all__ = [
    "LOG_FIELDS",
    "LogFields",
    "about_message",
    "about_workflow",
    "current_log_fields",
    "error_for_log",
    "timed",
    "with_fields",
    "with_log_fields",
]


@dataclass(frozen=True)
class LogFields:
    """What a log record says it is about."""

    workflow_name: str | None = None
    workflow_id: str | None = None
    message_name: str | None = None
    message_id: str | None = None
    correlation_id: str | None = None


LOG_FIELDS = tuple(field.name for field in fields(LogFields))
"""The names of the attributes every busflow log record carries."""


class _MessageFields(Protocol):
    """What a log record says of the message being handled (a ``TransportMessage`` has it)."""

    @property
    def name(self) -> str: ...
    @property
    def message_id(self) -> str: ...
    @property
    def correlation_id(self) -> str | None: ...


_message: contextvars.ContextVar[_MessageFields | None] = contextvars.ContextVar(
    "busflow_log_message", default=None
)
_workflow: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "busflow_log_workflow", default=(None, None)
)


class _AboutMessage:
    """The block of ``about_message``: one context variable set, since it is entered several
    times for every message; the fields are read from the message only when a record is
    made."""

    __slots__ = ("_message", "_token")

    def __init__(self, message: _MessageFields) -> None:
        self._message = message

    def __enter__(self) -> None:
        self._token = _message.set(self._message)

    def __exit__(self, *_: object) -> None:
        _message.reset(self._token)


class _AboutWorkflow:
    """The block of ``about_workflow``."""

    __slots__ = ("_token", "_workflow")

    def __init__(self, workflow: tuple[str | None, str | None]) -> None:
        self._workflow = workflow

    def __enter__(self) -> None:
        self._token = _workflow.set(self._workflow)

    def __exit__(self, *_: object) -> None:
        _workflow.reset(self._token)


def about_message(message: _MessageFields) -> _AboutMessage:
    """Within this block, busflow's log records name ``message``: its ``name``,
    ``message_id`` and ``correlation_id``."""
    return _AboutMessage(message)


def about_workflow(workflow_name: str | None, workflow_id: str | None = None) -> _AboutWorkflow:
    """Within this block, busflow's log records name this workflow."""
    return _AboutWorkflow((workflow_name, workflow_id))


def current_log_fields() -> LogFields:
    """The fields a busflow log record made here would carry."""
    message = _message.get()
    workflow_name, workflow_id = _workflow.get()
    if message is None:
        return LogFields(workflow_name, workflow_id)
    return LogFields(
        workflow_name, workflow_id, message.name, message.message_id, message.correlation_id
    )


class _AddFields(logging.Filter):
    """Gives each record the current fields, unless the call gave them in ``extra``."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = current_log_fields()
        for name in LOG_FIELDS:
            if name not in record.__dict__:
                setattr(record, name, getattr(current, name))
        return True


_ADD_FIELDS = _AddFields()


def with_fields(logger: logging.Logger) -> logging.Logger:
    """``logger``, which from now on gives its records the current fields."""
    if _ADD_FIELDS not in logger.filters:
        logger.addFilter(_ADD_FIELDS)
    return logger


def with_log_fields(
    factory: Callable[[str], logging.Logger],
) -> Callable[[str], logging.Logger]:
    """A logger factory whose loggers give their records the current fields."""

    def make(name: str) -> logging.Logger:
        return with_fields(factory(name))

    return make


class _Timed:
    """The block of ``timed``: a plain class, since it is entered for every handler run."""

    __slots__ = ("_handler", "_logger", "_message_name", "_started")

    def __init__(self, logger: logging.Logger, handler: str, message_name: str) -> None:
        self._logger, self._handler, self._message_name = logger, handler, message_name
        self._started = 0.0

    def __enter__(self) -> None:
        self._logger.debug("%s started on %s", self._handler, self._message_name)
        self._started = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        duration_ms = (time.perf_counter() - self._started) * 1000
        self._logger.debug(
            "%s %s on %s in %.3f ms",
            self._handler,
            "failed" if kind is not None else "finished",
            self._message_name,
            duration_ms,
            extra={"duration_ms": duration_ms},
        )


def timed(logger: logging.Logger, handler: str, message_name: str) -> AbstractContextManager[None]:
    """Log a handler's start and its finish, with its duration (``duration_ms``), at DEBUG."""
    if not logger.isEnabledFor(logging.DEBUG):
        return _NOT_TIMED  # no block of its own: one is entered for every handler run
    return _Timed(logger, handler, message_name)


_NOT_TIMED: AbstractContextManager[None] = contextlib.nullcontext()


def error_for_log(error: BaseException, *, values: bool) -> str:
    """``error`` as a log line at INFO or above may show it: no value of a state or message.

    With ``values`` (``with_values_in_logs()``) it is the type and the text. Otherwise a
    pydantic validation error gives where and what went wrong, without the input; a busflow
    error whose text holds no values (``text_holds_values``) gives its text; any other error
    gives only its type (a dead letter keeps the whole text).
    """
    kind = f"{type(error).__module__}.{type(error).__qualname__}"
    if values:
        return f"{kind}: {error}"
    if isinstance(error, ValidationError):
        problems = "; ".join(
            f"{'.'.join(map(str, problem['loc'])) or '(value)'}: {problem['msg']}"
            for problem in error.errors(include_input=False, include_url=False)
        )
        return f"{kind}: {error.error_count()} validation error(s) for {error.title}: {problems}"
    if isinstance(error, BusflowError) and not error.text_holds_values:
        return f"{kind}: {error}"
    return f"{kind} (its text is not logged: it may hold values; see with_values_in_logs)"
