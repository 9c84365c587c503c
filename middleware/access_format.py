"""Apache ``mod_log_config`` formats for access logs, compiled once; and the fields' formatting.

`compile_format` turns a format such as `COMMON_LOG_FORMAT` into literal strings and
renderers (see `AccessLog` in `aiowt.middleware.logging` for the directives); the
helpers below format what both access logs write: durations as Go prints them, query
strings with credentials redacted, the remote user, and values escaped as Apache does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from urllib.parse import unquote

from aiowt.transport import SessionContext, UsageError

from .keys import REMOTE_USER, SECRET_NAMES
from .record import SessionRecord

__all__ = [
    "COMBINED_LOG_FORMAT",
    "COMMON_LOG_FORMAT",
    "DEFAULT_REDACTED",
    "DEV_LOG_FORMAT",
    "Render",
    "compile_format",
    "format_duration",
    "redact_query",
    "remote_user",
    "request_url",
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


Render = Callable[[SessionContext, SessionRecord], str]

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DIRECTIVE = re.compile(r"%(?:\{([^}]*)\}([io])|(.?))", re.DOTALL)
_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\]')
_PID = os.getpid


def _version(ctx: SessionContext) -> str:
    """The request's HTTP version: a WebSocket upgrade is HTTP/1.1, a CONNECT HTTP/3."""
    return "HTTP/1.1" if ctx.transport == "websocket" else "HTTP/3"


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


def request_url(ctx: SessionContext, redact: frozenset[str]) -> str:
    query = _redacted_query(ctx, redact)
    return ctx.path + (f"?{query}" if query else "")


def remote_user(ctx: SessionContext) -> str | None:
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


def compile_format(fmt: str, redact: frozenset[str]) -> tuple[str | Render, ...]:
    """`fmt` parsed once into literal strings and renderers; `UsageError` if it is invalid.

    Join the literals and each renderer's ``render(ctx, record)`` to get a line.
    """

    def header(name: str, response: bool) -> Render:
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

    simple: dict[str, Render] = {
        "h": lambda ctx, r: ctx.remote_ip,
        "l": lambda ctx, r: "-",
        "u": lambda ctx, r: _escape(remote_user(ctx) or "-"),
        "t": lambda ctx, r: _clf_time(r),
        "r": lambda ctx, r: f"{ctx.method} {_escape(request_url(ctx, redact))} {_version(ctx)}",
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
        "H": lambda ctx, r: _version(ctx),
        "P": lambda ctx, r: str(_PID()),
        "%": lambda ctx, r: "%",
    }
    parts: list[str | Render] = []
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
    merged: list[str | Render] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    return tuple(merged)
