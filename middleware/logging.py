"""Session logs through structlog, and access logs (Apache formats and JSON lines).

- `LogContext` (seed 000's ``SlogAttrs``) binds the session's ids (`ctx.ids`:
  ``session_id``, ``request_id``, ``remote_addr``, ``path``) in structlog's
  contextvars around the rest of the chain. The handler actor's task is created inside
  it and copies the context, so every log call in a handler carries the ids (with
  structlog's ``merge_contextvars`` processor, which is in its default configuration).
- `Logger` / `DefaultLogger` log a session's life: ``session started`` when it is
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
import os
import re
from collections.abc import Callable, Iterable
from typing import Any, Protocol
from urllib.parse import unquote

import structlog

from aiowt.transport.context import SessionContext
from aiowt.transport.errors import UsageError

from .chain import CallNext
from .keys import REMOTE_USER, SECRET_NAMES
from .timing import SessionRecord, observe, when_accepted

__all__ = [
    "COMBINED_LOG_FORMAT",
    "COMMON_LOG_FORMAT",
    "DEFAULT_REDACTED",
    "DEV_LOG_FORMAT",
    "AccessLog",
    "DefaultLogger",
    "EventLogger",
    "JsonAccessLog",
    "LogContext",
    "Logger",
    "format_duration",
    "redact_query",
]

COMMON_LOG_FORMAT = '%h %l %u %t "%r" %s %b'
"""The Common Log Format (CLF)."""

COMBINED_LOG_FORMAT = '%h %l %u %t "%r" %s %b "%{Referer}i" "%{User-Agent}i"'
"""NCSA extended/combined log format."""

DEV_LOG_FORMAT = '%t %S\033[0m \033[36;1m%Dμs\033[0m "%r" \033[1;30m%u "%{User-Agent}i"\033[0m'
"""Coloured, with the response time: convenient in a development terminal (seed 003)."""

DEFAULT_REDACTED = frozenset(
    {
        "access_token",
        "api_key",
        "apikey",
        "auth",
        "authorization",
        "cookie",
        "id_token",
        "jwt",
        "password",
        "proxy-authorization",
        "secret",
        "token",
    }
)
"""Query parameter and header names whose values access logs replace with ``REDACTED``."""


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
                record, error = await observe(ctx, call_next)
                self._log_end(ctx, record)
        else:
            record, error = await observe(ctx, call_next)
            self._log_end(ctx, record)
        if error is not None:
            raise error

    def _log_end(self, ctx: SessionContext, record: SessionRecord) -> None:
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


class DefaultLogger(Logger):
    """`Logger` with structlog's default logger (seed 000's ``DefaultLogger()``)."""

    def __init__(self) -> None:
        super().__init__()

    def __repr__(self) -> str:
        return "DefaultLogger()"


# --- access logs -------------------------------------------------------------------------------

_Render = Callable[[SessionContext, SessionRecord], str]

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DIRECTIVE = re.compile(r"%(?:\{([^}]*)\}([io])|(.?))", re.DOTALL)
_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\]')
_PID = os.getpid


def _escape(value: str) -> str:
    """Apache's escaping: quotes, backslashes and control bytes cannot forge log lines."""

    def one(match: re.Match[str]) -> str:
        char = match.group()
        return "\\" + char if char in '"\\' else f"\\x{ord(char):02x}"

    return _UNSAFE.sub(one, value)


def redact_query(query_string: str, names: Iterable[str] = DEFAULT_REDACTED) -> str:
    """`query_string` with the values of parameters named in `names` replaced by ``REDACTED``.

    The rest is kept byte for byte (no re-encoding), so a log shows what was sent.
    """
    if not query_string:
        return ""
    hidden = {name.lower() for name in names}
    parts = []
    for pair in query_string.split("&"):
        name, sep, _ = pair.partition("=")
        if sep and unquote(name.replace("+", " ")).lower() in hidden:
            pair = f"{name}=REDACTED"
        parts.append(pair)
    return "&".join(parts)


def format_duration(seconds: float) -> str:
    """A duration as Go's ``time.Duration`` prints it: ``34.679µs``, ``1.5s``, ``1m15.9s``."""
    ns = round(seconds * 1e9)
    if ns < 1_000:
        return f"{ns}ns"
    for limit, unit, scale in ((1_000_000, "µs", 1e3), (1_000_000_000, "ms", 1e6)):
        if ns < limit:
            return _trim(f"{ns / scale:.{len(str(int(scale))) - 1}f}") + unit
    hours, rest = divmod(ns, 3_600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = _trim(f"{rest / 1e9:.9f}") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


def _trim(number: str) -> str:
    return number.rstrip("0").rstrip(".") if "." in number else number


def _redacted_query(ctx: SessionContext, redact: frozenset[str]) -> str:
    secret_names = ctx.get(SECRET_NAMES)
    return redact_query(ctx.request.query_string, redact | secret_names)


def _url(ctx: SessionContext, redact: frozenset[str]) -> str:
    query = _redacted_query(ctx, redact)
    return ctx.path + (f"?{query}" if query else "")


def _remote_user(ctx: SessionContext) -> str | None:
    user = ctx.get(REMOTE_USER, None)
    if user is None and isinstance(ctx.identity, str):
        user = ctx.identity
    return user


def _colour(status: int) -> str:
    if status >= 500:
        return "\033[31;1m"
    if status >= 400:
        return "\033[33;1m"
    return "\033[32;1m"


def _clf_time(record: SessionRecord) -> str:
    local = record.start_time.astimezone()
    return local.strftime(f"[%d/{_MONTHS[local.month - 1]}/%Y:%H:%M:%S %z]")


def _compile(fmt: str, redact: frozenset[str]) -> tuple[str | _Render, ...]:
    """The format as literal strings and renderers, parsed once."""

    def header(name: str, response: bool) -> _Render:
        wanted = name.lower()
        hidden = wanted in redact

        def render(ctx: SessionContext, record: SessionRecord) -> str:
            if response:
                value = next((v for k, v in ctx.response_headers if k == wanted), None)
            else:
                value = ctx.request.header(wanted)
            if value is None:
                return "-"
            if hidden or wanted in ctx.get(SECRET_NAMES):
                return "REDACTED"
            return _escape(value)

        return render

    simple: dict[str, _Render] = {
        "h": lambda ctx, r: ctx.remote_ip,
        "l": lambda ctx, r: "-",
        "u": lambda ctx, r: _escape(_remote_user(ctx) or "-"),
        "t": lambda ctx, r: _clf_time(r),
        "r": lambda ctx, r: f"{ctx.method} {_escape(_url(ctx, redact))} HTTP/3",
        "s": lambda ctx, r: str(r.status),
        "S": lambda ctx, r: f"{_colour(r.status)}{r.status}",
        "b": lambda ctx, r: str(r.bytes_out) if r.bytes_out else "-",
        "B": lambda ctx, r: str(r.bytes_out),
        "I": lambda ctx, r: str(r.bytes_in),
        "O": lambda ctx, r: str(r.bytes_out),
        "D": lambda ctx, r: str(int(r.elapsed * 1_000_000)),
        "T": lambda ctx, r: f"{r.elapsed:.3f}",
        "m": lambda ctx, r: ctx.method,
        "U": lambda ctx, r: _escape(ctx.path),
        "q": lambda ctx, r: _escape(f"?{q}" if (q := _redacted_query(ctx, redact)) else ""),
        "H": lambda ctx, r: "HTTP/3",
        "P": lambda ctx, r: str(_PID()),
        "%": lambda ctx, r: "%",
    }
    parts: list[str | _Render] = []
    position = 0
    for match in _DIRECTIVE.finditer(fmt):
        if match.start() > position:
            parts.append(fmt[position : match.start()])
        position = match.end()
        name, kind, letter = match.groups()
        if kind is not None:
            if not name:
                raise UsageError(f"empty header name in %{{}}{kind} in log format {fmt!r}")
            parts.append(header(name, kind == "o"))
        elif letter in simple:
            parts.append("%" if letter == "%" else simple[letter])
        else:
            shown = f"%{letter}" if letter else "a lone % at the end"
            raise UsageError(
                f"unsupported directive {shown} in log format {fmt!r}; supported: "
                "%h %l %u %t %r %s %S %b %B %I %O %D %T %m %U %q %H %P %% %{Header}i %{Header}o"
            )
    if position < len(fmt):
        parts.append(fmt[position:])
    # Adjacent literals merge, so a line is built from as few pieces as possible.
    merged: list[str | _Render] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    return tuple(merged)


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
        self._parts = _compile(format, self.redact)
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
        record, error = await observe(ctx, call_next)
        line = self.render(ctx, record)
        if self.sink is not None:
            self.sink(line)
        else:
            self.logger.info(line)
        if error is not None:
            raise error


class JsonAccessLog:
    """One JSON record per session (or refusal): seed 001's fields, and the session's.

    ``duration`` (Go style, ``"34.679µs"``), ``duration_ms``, ``ip_address``
    (``"[::1]:62865"``), ``request_id``, ``status``, ``time`` (RFC 3339, when the
    CONNECT arrived), ``url`` (path and redacted query); then ``method``, ``route``,
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
            "duration": format_duration(record.elapsed),
            "duration_ms": round(record.elapsed * 1000, 3),
            "ip_address": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            "request_id": ctx.request_id or ctx.session_id,
            "status": record.status,
            "time": record.start_time.astimezone().isoformat(),
            "url": _url(ctx, self.redact),
            "method": ctx.method,
            "route": ctx.route_pattern,
            "session_id": ctx.session_id,
            "user_agent": ctx.user_agent,
            "remote_user": _remote_user(ctx),
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
        record, error = await observe(ctx, call_next)
        fields = self.record(ctx, record)
        if self.sink is not None:
            self.sink(json.dumps(fields, ensure_ascii=False, separators=(",", ":")))
        else:
            self.logger.info("access", **fields)
        if error is not None:
            raise error
