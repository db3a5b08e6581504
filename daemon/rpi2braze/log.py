"""Structured logging: JSON lines on stdout (journald) or a console renderer on a terminal.

Log events are snake_case with bound context: `log.info("batch_delivered", workflow_id=..., rows=...)`.
Secrets are `Secret` values, whose repr is '***', so they cannot leak through a log line.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Callable, Hashable

import orjson
import structlog


_configured = {"format": "json"}


def configure(level: str = "info", fmt: str = "json", stream=None) -> None:
    """Set up structlog for the process. `fmt` is "json" or "console"; `stream` defaults to stdout
    (journald reads it); one-shot commands log to stderr so their stdout stays machine-readable."""
    _configured["format"] = fmt
    renderer = (
        structlog.processors.JSONRenderer(serializer=lambda obj, **_: orjson.dumps(obj, default=str).decode())
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _escape_undecodable,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
    # What libraries log (paramiko, pyftpdlib) and Python's warnings (watchdog's) go the same way:
    # by default they reach stderr as plain, sometimes multi-line, text among the JSON lines.
    # Libraries speak up only when something is wrong: paramiko's debug lines trace every packet.
    root = logging.getLogger()
    root.handlers[:] = [_LibraryHandler()]
    root.setLevel(max(logging.WARNING, logging.getLevelNamesMapping()[level.upper()]))
    logging.captureWarnings(True)


class _LibraryHandler(logging.Handler):
    """Passes a standard-library log record on to structlog, as event "library_log"."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:   # a library's bad format string must not lose the line
            message = str(record.msg)
        fields = {"logger": record.name, "message": message}
        if record.exc_info:
            fields["exc_info"] = record.exc_info
        get_logger(record.name).log(record.levelno, "library_log", **fields)


def _escape_undecodable(logger, method: str, event: dict) -> dict:
    """Show bytes that could not be decoded (a file name in another encoding: lone surrogates) as
    \\udcXX escapes: neither orjson nor a UTF-8 stream can write them, and the line would be lost."""
    return {key: _escaped(value) for key, value in event.items()}


def _escaped(value):
    if isinstance(value, str):
        if value.isascii():
            return value
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, (list, tuple)):
        return [_escaped(item) for item in value]
    return value


def current_format() -> str:
    """The format this process logs in, for child processes to log the same way."""
    return _configured["format"]


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)


class Throttle:
    """Lets one log line per key through every `seconds` and counts the ones held back, so a storm
    of the same warning (a retry for every request while Braze rate-limits) is one line per
    interval that says how many it stands for. Thread-safe."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self._seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def admit(self, key: Hashable) -> int | None:
        """None: hold this line back (it is counted). Otherwise log it, saying that it stands for
        the returned number of lines of this key held back since the last one let through."""
        with self._lock:
            now = self._clock()
            last = self._last.get(key)
            if last is not None and now - last < self._seconds:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._held.pop(key, 0)

    def log(self, method: Callable[..., object], event: str, key: Hashable, **fields: object) -> bool:
        """Log `event` through `method` (log.warning, log.error) with `similar_since_last`, the
        lines of `key` held back before it, if `admit(key)` lets it through; return whether it did."""
        held_back = self.admit(key)
        if held_back is None:
            return False
        method(event, **fields, similar_since_last=held_back)
        return True
