"""Logging: one JSON object per line on stdout, rendered with orjson.

structlog events and the standard library's records (uvicorn's among them) go through one
processor pipeline: request id, level, ISO-8601 UTC timestamp, redaction, then the renderer.
The access line, written on every request, is the one exception: `AccessLog` renders its fixed
fields itself, with one orjson call, and keeps the pipeline's guarantees by hand (see there).
Lines are handed to a writer thread, so a slow log reader never blocks the event loop; the
lines it had to drop are counted (`lines_dropped`, exported as a metric by the app).
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from contextvars import ContextVar
from typing import Any, BinaryIO

import orjson
import structlog

from observability.redact import Redactor
from observability.timestamps import iso_utc_ms

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

BATCH_DELAY_S = 0.02
MAX_LOGGED = 512  # longest path or user agent written to an access line
_LEVEL_NAMES = {10: "debug", 20: "info", 30: "warning", 40: "error", 50: "critical"}
_sink: LineSink | None = None
_dropped_by_closed_sinks = 0
_PROCESSORS: list[Any] = []
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class LineSink:
    """Writes whole lines to a binary stream from a background thread, in order.

    `write` is a queue put; the thread wakes for the first line of a burst, waits a few
    milliseconds, then writes everything queued in one call. A blocked pipe stalls only the thread.
    """

    MAX_QUEUED = 10_000  # lines; past this (a stuck reader) new lines are dropped, not buffered forever

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.dropped = 0
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def write(self, line: bytes) -> None:
        if self._queue.qsize() >= self.MAX_QUEUED:
            self.dropped += 1
            return
        self._queue.put(line)

    def _run(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            item = get()  # idle: blocks here, so an idle service costs nothing
            # Let the burst accumulate: puts made while this thread sleeps wake nobody, which is
            # what makes a log line cheap for the event loop (a wake-up costs a GIL handoff).
            time.sleep(BATCH_DELAY_S)
            batch = []
            stop = False
            while True:
                if item is None:
                    stop = True
                    break
                batch.append(item)
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
            if batch:
                try:
                    self._stream.write(b"".join(batch))
                    self._stream.flush()
                except (OSError, ValueError):
                    pass  # stdout is gone; nothing better to do with a log line
            if stop:
                return

    def close(self, timeout: float = 2.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)


class _SinkLogger:
    """The structlog logger at the end of the chain: takes rendered bytes or str.

    It writes to whichever sink is current, so loggers cached before a reconfiguration follow it.
    """

    __slots__ = ()

    def msg(self, message: bytes | str) -> None:
        sink = _sink
        if sink is None:
            return
        if isinstance(message, str):
            message = message.encode("utf-8", "replace")
        sink.write(message + b"\n")

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


_LOGGER = _SinkLogger()


def _logger_factory(*args: Any) -> _SinkLogger:
    return _LOGGER


class _SinkHandler(logging.Handler):
    def __init__(self, sink: LineSink, formatter: logging.Formatter) -> None:
        super().__init__()
        self._sink = sink
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._sink.write(self.format(record).encode("utf-8", "replace") + b"\n")
        except Exception:
            self.handleError(record)


def lines_dropped() -> int:
    """Log lines dropped since start-up because the reader fell behind (a counter: never decreases)."""
    sink = _sink
    return _dropped_by_closed_sinks + (sink.dropped if sink is not None else 0)


def add_timestamp(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    # The access line's format, so every line of the log reads the same way.
    event_dict["timestamp"] = iso_utc_ms(time.time())
    return event_dict


def add_request_id(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    if "request_id" not in event_dict:
        rid = request_id_var.get()
        if rid is not None:
            event_dict["request_id"] = rid
    return event_dict


def _orjson_str(obj: Any, **kwargs: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def _orjson_bytes(obj: Any, **kwargs: Any) -> bytes:
    return orjson.dumps(obj, default=str)


def configure_logging(
    level: str = "info",
    fmt: str = "json",
    *,
    redactor: Redactor | None = None,
    stream: BinaryIO | None = None,
) -> Redactor:
    """Configure structlog and the standard library once, at start-up. Returns the redactor."""
    global _sink
    _close_sink()
    redactor = redactor or Redactor()
    _sink = sink = LineSink(stream or sys.stdout.buffer)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_request_id,
        structlog.processors.add_log_level,
        add_timestamp,
    ]
    tail: list[Any] = [redactor]
    if fmt == "console":
        renderer: Any = structlog.dev.ConsoleRenderer(colors=True)
        std_renderer: Any = renderer
    else:
        tail.insert(0, structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_bytes)
        std_renderer = structlog.processors.JSONRenderer(serializer=_orjson_str)

    # One list, changed in place: loggers cached before a reconfiguration hold it, and follow it.
    _PROCESSORS[:] = [*shared, structlog.processors.StackInfoRenderer(), *tail, renderer]
    structlog.configure(
        processors=_PROCESSORS,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=_logger_factory,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, std_renderer],
    )
    access_log.min_level = _LEVELS[level]
    access_log.json = fmt == "json"
    access_log.redactor = redactor
    root = logging.getLogger()
    root.handlers[:] = [_SinkHandler(sink, formatter)]
    root.setLevel(_LEVELS[level])
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Client libraries log every request at info; our own code logs the upstream calls that matter.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, _LEVELS[level]))
    # Our middleware writes the access line; uvicorn's would duplicate it without a request id.
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
    access.disabled = True
    return redactor


class AccessLog:
    """The access line, on every request: its fixed fields rendered by one orjson call.

    It skips structlog's processor chain (the line has no free-form fields) but keeps its
    guarantees: the level filter (the middleware compares `min_level` before building the
    fields), the same UTC ISO-8601 timestamp, and redaction of the two fields a client controls
    (the path with its query, and the user agent). With the console format it goes through the
    pipeline like any other event.
    """

    __slots__ = ("json", "min_level", "redactor")

    def __init__(self, min_level: int, json: bool, redactor: Redactor) -> None:
        self.min_level = min_level
        self.json = json
        self.redactor = redactor

    def emit(self, level: int, fields: dict[str, Any], path: str, query: bytes, agent: bytes | None) -> None:
        """`fields` starts with `event`, `level` and `timestamp` set to None, and has `path` and
        `user_agent` keys: all five are filled in here, the last two from the raw, client-given
        values, scrubbed and cut to `MAX_LOGGED` characters."""
        redactor = self.redactor
        fields["path"] = redactor.scrub_target(path, query, MAX_LOGGED)
        if agent:
            fields["user_agent"] = redactor.scrub_header(agent, MAX_LOGGED)
        sink = _sink
        if self.json and sink is not None:
            fields["event"] = "request"
            fields["level"] = _LEVEL_NAMES[level]
            fields["timestamp"] = iso_utc_ms(time.time())
            sink.write(orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE))
        else:
            for key in ("event", "level", "timestamp"):
                del fields[key]
            structlog.get_logger("access").log(level, "request", **fields)


# Replaced by `configure_logging`; until then access lines go through structlog's defaults.
access_log = AccessLog(logging.INFO, False, Redactor())


def flush_logs() -> None:
    """Drain the writer thread; called at shutdown so the last lines are not lost."""
    _close_sink()


def _close_sink() -> None:
    global _sink, _dropped_by_closed_sinks
    sink = _sink
    if sink is not None:
        sink.close()
        _dropped_by_closed_sinks += sink.dropped
        _sink = None
