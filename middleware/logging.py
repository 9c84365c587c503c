"""Session logs through structlog, and access logs (Apache formats and JSON lines).

- `LogContext` (seed 000's ``SlogAttrs``) binds the session's ids (`ctx.ids`:
  ``session_id``, ``request_id``, ``remote_addr``, ``path``) in structlog's
  contextvars around the rest of the chain. The handler actor's task is created inside
  it and copies the context, so every log call in a handler carries the ids (with
  structlog's ``merge_contextvars`` processor, which is in its default configuration).
- `Logger` logs a session's life: ``session started`` when it is
  accepted, ``session ended`` with status, duration, bytes and close code, or
  ``session rejected`` with the status, reason and the middleware that refused it.
  They bind the ids as `LogContext` does.
- `AccessLog` writes one line per session in an Apache ``mod_log_config`` format
  (presets `COMMON_LOG_FORMAT`, `COMBINED_LOG_FORMAT`, and the coloured
  `DEV_LOG_FORMAT`, the default); `JsonAccessLog` writes seed 001's JSON record.

All of them log refused handshakes too, with their status. Query parameters and headers
that carry secrets (``token``, ``authorization``, ... see `DEFAULT_REDACTED`) are
logged as ``REDACTED``: browsers cannot set headers on a WebTransport CONNECT, so
tokens travel in the query string. A request that matches no route is answered 404 by
the router before any middleware runs, so it is not in these logs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import structlog

from aiowt.transport import SessionContext, UsageError
from aiowt.transport.deprecation import deprecated_names

from ._plumbing import observe, when_accepted
from .access_format import (
    COMBINED_LOG_FORMAT,
    COMMON_LOG_FORMAT,
    DEFAULT_REDACTED,
    DEV_LOG_FORMAT,
    compile_format,
    remote_user,
    request_url,
)
from .access_format import format_duration as _format_duration
from .access_format import redact_query as _redact_query
from .chain import CallNext
from .record import SessionRecord

__all__ = [
    "COMBINED_LOG_FORMAT",
    "COMMON_LOG_FORMAT",
    "DEFAULT_REDACTED",
    "DEV_LOG_FORMAT",
    "AccessLog",
    "EventLogger",
    "JsonAccessLog",
    "LogContext",
    "Logger",
]


class EventLogger(Protocol):
    """What the loggers need: structlog's bound loggers (and anything alike) fit."""

    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...


def _default_logger(name: str) -> EventLogger:
    logger: EventLogger = structlog.get_logger(name)
    return logger


# --- ids in contextvars ------------------------------------------------------------------------


class LogContext:
    """Bind the session's ids in structlog's contextvars for the rest of the chain.

    Seed 000's ``SlogAttrs``: any ``log.info(...)`` in later middleware or in the
    handler (its actor task inherits the context) carries ``session_id``,
    ``request_id``, ``remote_addr`` and ``path``. Put it after `RequestID` so the
    request id is the one the client sees.
    """

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        with structlog.contextvars.bound_contextvars(**ctx.ids):
            await call_next(ctx)

    def __repr__(self) -> str:
        return "LogContext()"


# --- session lifecycle logs --------------------------------------------------------------------


class Logger:
    """Log each session's start, end or refusal through structlog, with its ids bound.

    ``session started`` (info) when the server accepts it, with ``route`` and
    ``handshake`` (seconds); ``session ended`` (info; warning when it ended with an
    error) with ``status``, ``duration`` (seconds since acceptance), ``bytes_in``,
    ``bytes_out``, ``close_code``, ``close_reason``, ``closed_by_peer``; or
    ``session rejected`` (info for 4xx, warning for 5xx) with ``status``, ``reason``
    and ``rejected_by``. Every line carries the ids, also when structlog is configured
    without ``merge_contextvars``.

    `logger` is any structlog-style logger (default: ``structlog.get_logger("aiowt.session")``);
    `bind=False` leaves the contextvars alone (when `LogContext` is used separately).
    """

    def __init__(self, logger: EventLogger | None = None, *, bind: bool = True) -> None:
        if logger is not None and not (
            callable(getattr(logger, "info", None)) and callable(getattr(logger, "warning", None))
        ):
            raise UsageError(f"logger needs info() and warning() methods, got {logger!r}")
        self._given = logger
        self.logger = logger if logger is not None else _default_logger("aiowt.session")
        self.bind = bind

    def __repr__(self) -> str:
        shown = "default" if self._given is None else repr(self._given)
        return f"{type(self).__name__}(logger={shown}, bind={self.bind})"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        logger = self.logger

        def started(_: object) -> None:
            assert ctx.accepted_at is not None
            logger.info(
                "session started",
                **ctx.ids,
                route=ctx.route_pattern,
                handshake=round(ctx.accepted_at - ctx.started_at, 6),
            )

        when_accepted(ctx, started)
        if self.bind:
            with structlog.contextvars.bound_contextvars(**ctx.ids):
                async with observe(ctx, self._log_end):
                    await call_next(ctx)
        else:
            async with observe(ctx, self._log_end):
                await call_next(ctx)

    def _log_end(
        self, ctx: SessionContext, record: SessionRecord, error: BaseException | None
    ) -> None:
        if not record.accepted:
            method = self.logger.warning if record.status >= 500 else self.logger.info
            method(
                "session rejected",
                **ctx.ids,
                route=ctx.route_pattern,
                status=record.status,
                reason=record.reason,
                rejected_by=record.rejected_by,
                handshake=round(record.handshake_seconds, 6),
                **({"error": record.error} if record.error else {}),
            )
            return
        method = self.logger.warning if record.failed else self.logger.info
        assert record.duration is not None
        method(
            "session ended",
            **ctx.ids,
            route=ctx.route_pattern,
            status=record.status,
            duration=round(record.duration, 6),
            bytes_in=record.bytes_in,
            bytes_out=record.bytes_out,
            close_code=record.close_code,
            close_reason=record.close_reason,
            closed_by_peer=record.closed_by_peer,
            **({"error": record.error} if record.error else {}),
        )


# --- access logs -------------------------------------------------------------------------------


def _check_sink(sink: Callable[[str], object] | None) -> None:
    if sink is not None and not callable(sink):
        raise UsageError(f"sink must be a callable taking one str, got {sink!r}")


class AccessLog:
    """One line per session (or refusal) in an Apache ``mod_log_config`` format.

    Directives (seed 003's subset, read for a WebTransport session):

    ``%h`` remote IP · ``%l`` ``-`` · ``%u`` remote user (``REMOTE_USER`` from
    `BasicAuth`, or a ``str`` identity), ``-`` if none · ``%t`` time of the CONNECT,
    ``[10/Oct/2000:13:55:36 -0700]`` · ``%r`` ``CONNECT /path?query HTTP/3`` · ``%s``
    status · ``%S`` status after a terminal colour · ``%b`` bytes sent, ``-`` if 0 ·
    ``%B`` bytes sent · ``%I`` / ``%O`` bytes received / sent · ``%D`` elapsed
    microseconds · ``%T`` elapsed seconds, 3 decimals · ``%m`` method · ``%U`` path ·
    ``%q`` ``?query`` or nothing · ``%H`` ``HTTP/3`` · ``%P`` process id · ``%%`` a
    percent sign · ``%{Name}i`` request header · ``%{Name}o`` response header (``-``
    when missing).

    "Elapsed" runs from the CONNECT to the end of the session (or its refusal): the
    line is written when the session is over. Values of parameters and headers named in
    `redact` are written as ``REDACTED``; quotes and control characters are escaped.

    The line goes to `sink` (any ``str`` callable: a file's ``write`` wrapper, a stdlib
    logger's ``info``) when given, else it is the event of an ``info`` call on
    `logger` (default: ``structlog.get_logger("aiowt.access")``). Either runs on the
    event loop: give a sink that does not block for long.
    """

    def __init__(
        self,
        format: str = DEV_LOG_FORMAT,
        *,
        logger: EventLogger | None = None,
        sink: Callable[[str], object] | None = None,
        redact: Iterable[str] = DEFAULT_REDACTED,
    ) -> None:
        if not isinstance(format, str) or not format:
            raise UsageError(f"format must be a non-empty str, got {format!r}")
        _check_sink(sink)
        self.format = format
        self.redact = frozenset(name.lower() for name in redact)
        self._parts = compile_format(format, self.redact)
        self._given = logger
        self.logger = logger if logger is not None else _default_logger("aiowt.access")
        self.sink = sink

    def __repr__(self) -> str:
        preset = {
            COMMON_LOG_FORMAT: "COMMON_LOG_FORMAT",
            COMBINED_LOG_FORMAT: "COMBINED_LOG_FORMAT",
            DEV_LOG_FORMAT: "DEV_LOG_FORMAT",
        }.get(self.format, repr(self.format))
        to = "sink" if self.sink is not None else "structlog"
        return f"AccessLog(format={preset}, to={to})"

    def render(self, ctx: SessionContext, record: SessionRecord) -> str:
        """The line for a session and its record."""
        return "".join(p if isinstance(p, str) else p(ctx, record) for p in self._parts)

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        async with observe(ctx, self._write):
            await call_next(ctx)

    def _write(self, ctx: SessionContext, record: SessionRecord, _: BaseException | None) -> None:
        line = self.render(ctx, record)
        if self.sink is not None:
            self.sink(line)
        else:
            self.logger.info(line)


class JsonAccessLog:
    """One JSON record per session (or refusal): seed 001's fields, and the session's.

    ``duration`` (Go style, ``"34.679µs"``), ``duration_ms``, ``ip_address``
    (``"[::1]:62865"``), ``request_id``, ``status``, ``time`` (RFC 3339, when the
    CONNECT arrived), ``url`` (path and redacted query); then ``method``, ``transport``, ``route``,
    ``session_id``, ``user_agent``, ``remote_user``, ``bytes_in``, ``bytes_out``,
    ``close_code``, and for a refusal ``reason`` and ``rejected_by``.

    With `sink`, each record is written to it as one line of JSON; otherwise it is
    logged as the fields of an ``access`` event on `logger` (default:
    ``structlog.get_logger("aiowt.access")``), which structlog's ``JSONRenderer``
    turns into one JSON line.
    """

    def __init__(
        self,
        *,
        logger: EventLogger | None = None,
        sink: Callable[[str], object] | None = None,
        redact: Iterable[str] = DEFAULT_REDACTED,
    ) -> None:
        _check_sink(sink)
        self.redact = frozenset(name.lower() for name in redact)
        self._given = logger
        self.logger = logger if logger is not None else _default_logger("aiowt.access")
        self.sink = sink

    def __repr__(self) -> str:
        return f"JsonAccessLog(to={'sink' if self.sink is not None else 'structlog'})"

    def record(self, ctx: SessionContext, record: SessionRecord) -> dict[str, Any]:
        """The JSON record (a dict of JSON-ready values) for a session."""
        host, port = ctx.remote_addr
        fields: dict[str, Any] = {
            "duration": _format_duration(record.elapsed),
            "duration_ms": round(record.elapsed * 1000, 3),
            "ip_address": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            "request_id": ctx.request_id or ctx.session_id,
            "status": record.status,
            "time": record.start_time.astimezone().isoformat(),
            "url": request_url(ctx, self.redact),
            "method": ctx.method,
            "transport": ctx.transport,
            "route": ctx.route_pattern,
            "session_id": ctx.session_id,
            "user_agent": ctx.user_agent,
            "remote_user": remote_user(ctx),
            "bytes_in": record.bytes_in,
            "bytes_out": record.bytes_out,
            "close_code": record.close_code,
        }
        if record.rejected:
            fields["reason"] = record.reason
            fields["rejected_by"] = record.rejected_by
        if record.error is not None:
            fields["error"] = record.error
        return fields

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        async with observe(ctx, self._write):
            await call_next(ctx)

    def _write(self, ctx: SessionContext, record: SessionRecord, _: BaseException | None) -> None:
        fields = self.record(ctx, record)
        if self.sink is not None:
            self.sink(json.dumps(fields, ensure_ascii=False, separators=(",", ":")))
        else:
            self.logger.info("access", **fields)


# --- names this module used to hold -------------------------------------------------------

__getattr__ = deprecated_names(
    __name__,
    {
        "DefaultLogger": ("Logger() (it is the same middleware)", lambda: Logger),
        "format_duration": (
            "aiowt.middleware.access_format.format_duration",
            lambda: _format_duration,
        ),
        "redact_query": ("aiowt.middleware.access_format.redact_query", lambda: _redact_query),
    },
)
