"""Log like a library, configure like an application.

Library use: every module logs through :func:`get_logger`, and its events go to the standard
``logging`` module under ``imagegate.<module>`` loggers. imagegate adds no handler of its
own, so the host application's logging configuration decides what is shown and where; with
none at all, Python shows warnings and errors on stderr and drops the rest. Nothing is ever
written to stdout. A record's message is ``event key=value ...``; the event name and its
fields are also on the record, as ``record.event`` and ``record.fields``. A disabled level
costs one ``isEnabledFor`` check: nothing is formatted.

When the application has configured structlog (``structlog.configure``: the ``imagegate``
command, ``capture_logs()`` in tests, the demo's narrator), events go through that
configuration instead, as structlog's own loggers' would: the application decides there too.

Entry points (the CLI, ``serve``) call :func:`configure_logging` once: human lines on a
terminal, JSON lines otherwise, always on stderr.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import structlog

__all__ = [
    "Logger",
    "configure_logging",
    "event_of",
    "get_logger",
    "human_line",
    "structlog_configured",
    "unconfigure_logging",
]

ROOT = "imagegate"
_STAMPS = ("timestamp", "level", "exc_info")
_MARK = "_imagegate_handler"  # the handler configure_logging installed (replaced on each call)


class Logger:
    """structlog's event API (``log.info("event", key=value)``), delivered as described above."""

    __slots__ = ("_proxy", "_std")

    def __init__(self, name: str) -> None:
        self._std = logging.getLogger(name)
        self._proxy = structlog.get_logger(name)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, "error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error with the exception being handled (its traceback goes to the handler)."""
        self._log(logging.ERROR, "exception", event, fields)

    def _log(self, level: int, method: str, event: str, fields: dict[str, Any]) -> None:
        if structlog.is_configured():
            getattr(self._proxy, method)(event, **fields)
            return
        if not self._std.isEnabledFor(level):
            return
        context = structlog.contextvars.get_contextvars()
        if context:
            fields = {**context, **fields}
        self._std.log(
            level,
            "%s",
            _text(event, fields),
            exc_info=method == "exception",
            extra={"event": event, "fields": fields},
            stacklevel=3,
        )


def get_logger(name: str) -> Logger:
    """The logger of module ``name`` (pass ``__name__``)."""
    return Logger(name)


def _value(value: Any) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in "'\"=" for c in value):
        return value
    return repr(value) if isinstance(value, str) else str(value)


def _text(event: str, fields: dict[str, Any]) -> str:
    """``event: message key=value ...`` (``message`` is a field of events meant for people)."""
    head = f"{event}: {fields['message']}" if "message" in fields else event
    rest = " ".join(f"{k}={_value(v)}" for k, v in fields.items() if k != "message")
    return f"{head} {rest}" if rest else head


def event_of(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    """The event name and fields of a record, however it was made (structlog's
    ``ProcessorFormatter.wrap_for_formatter``, the library path above, or a foreign logger)."""
    if isinstance(record.msg, dict):
        fields = {k: v for k, v in record.msg.items() if k not in _STAMPS}
        return str(fields.pop("event", "")), fields
    event = getattr(record, "event", None)
    if isinstance(event, str):
        return event, dict(getattr(record, "fields", {}) or {})
    return record.getMessage(), {}


def human_line(record: logging.LogRecord) -> str:
    """One short line for people: ``imagegate: warning: <message, else event key=value ...>``."""
    event, fields = event_of(record)
    level = record.levelname.lower()
    who = "imagegate" if record.name.startswith(ROOT) else record.name
    said = fields["message"] if "message" in fields else _text(event, fields)  # meant for people
    return f"{who}: {level}: {said}"


class _HumanFormatter(logging.Formatter):
    def __init__(self, *, clear_line: bool) -> None:
        super().__init__()
        self._prefix = "\r\x1b[K" if clear_line else ""  # wipe a spinner line first

    def format(self, record: logging.LogRecord) -> str:
        line = self._prefix + human_line(record)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(
    *,
    level: str = "info",
    style: str = "auto",
    line_level: str | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Set up an entry point's logging: structlog through stdlib, one handler on stderr.

    ``style``: ``"json"`` (JSON lines), ``"console"`` (structlog's console renderer), ``"human"``
    (one short line per event) or ``"auto"`` (console on a terminal, JSON otherwise).
    ``level`` is what imagegate emits; ``line_level`` (default: ``level``) what is printed as a
    line (a status line may consume the rest). Calling it again replaces the earlier set-up.
    Returns the handler.
    """
    stream = stream or sys.stderr
    tty = stream.isatty()
    if style == "auto":
        style = "console" if tty else "json"
    emitted = logging.getLevelName(level.upper())
    shared: list[structlog.typing.Processor] = [
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(emitted),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    formatter: logging.Formatter
    if style == "human":
        formatter = _HumanFormatter(clear_line=tty)
    else:
        renderer: structlog.typing.Processor = (
            structlog.processors.JSONRenderer()
            if style == "json"
            else structlog.dev.ConsoleRenderer(colors=tty)
        )
        tail = [structlog.processors.format_exc_info] if style == "json" else []
        formatter = structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, renderer],
            foreign_pre_chain=shared,
        )
    handler.setFormatter(formatter)
    handler.setLevel(logging.getLevelName((line_level or level).upper()))
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # other libraries: warnings and up
    logging.getLogger(ROOT).setLevel(emitted)
    return handler


def unconfigure_logging() -> None:
    """Undo :func:`configure_logging`: back to the library's defaults (tests, embedders)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
    logging.getLogger(ROOT).setLevel(logging.NOTSET)
    structlog.reset_defaults()


@contextlib.contextmanager
def structlog_configured(**config: Any) -> Iterator[None]:
    """structlog configured with ``config`` for a block, then exactly as before: an
    unconfigured structlog is reset to unconfigured (so that imagegate's events go back to
    stdlib ``logging`` rather than to structlog's default printer on stdout)."""
    was_configured, old = structlog.is_configured(), structlog.get_config()
    structlog.configure(**config)
    try:
        yield
    finally:
        if was_configured:
            structlog.configure(**old)
        else:
            structlog.reset_defaults()
