"""Handshake middleware for request data: ids, headers, session data, conditions, errors.

Each class here decides on (or annotates) the CONNECT request before the session is
accepted; see ``docs/handshake-middleware.md`` for statuses, options and examples.
"""

from __future__ import annotations

import http
import inspect
import re
import types
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar, cast
from urllib.parse import parse_qsl

import structlog

from aiowt.middleware.chain import CallNext, Middleware
from aiowt.transport.context import Key, SessionContext
from aiowt.transport.errors import Rejected, UsageError

from .keys import ORIGIN, QUERY, SUBPROTOCOL, USER_AGENT

__all__ = [
    "Condition",
    "ErrorHandler",
    "ExtractHeader",
    "ExtractHeaders",
    "If",
    "MalformedQuery",
    "PoweredBy",
    "RequestID",
    "RequireHeader",
    "SessionData",
    "Subprotocols",
    "parse_available_protocols",
    "parse_query",
]

log = structlog.get_logger("aiowt.middleware")

T = TypeVar("T")

# RFC 9110 field-name token, lower-case as HTTP/3 requires on the wire.
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")


def _header_name(name: object, what: str = "header name") -> str:
    """`name` lower-cased, or `UsageError` if it cannot be an HTTP/3 header name."""
    if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name.lower()):
        raise UsageError(f"{what} must be an HTTP header name (a token), got {name!r}")
    return name.lower()


def _header_value(value: object, what: str) -> str:
    """`value`, or `UsageError` if sending it would break the response.

    HTTP/3 peers (aioquic included) tear down the whole connection on a header value
    with control characters or surrounding whitespace, so configuration that would
    produce one is refused up front rather than on the first session.
    """
    if (
        not isinstance(value, str)
        or not value
        or value != value.strip(" \t")
        or not value.isprintable()
    ):
        raise UsageError(
            f"{what} must be a non-empty printable header value without surrounding"
            f" whitespace, got {value!r}"
        )
    return value


async def _maybe_await(value: T | Awaitable[T]) -> T:
    """Await `value` if a sync-or-async callback returned an awaitable."""
    if inspect.isawaitable(value):
        return await cast(Awaitable[T], value)
    return value


def _check_callable(value: object, what: str) -> None:
    if isinstance(value, type) or not callable(value):
        raise UsageError(f"{what} must be a callable (or an instance), got {value!r}")


def _callable_name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


# --- query strings ------------------------------------------------------------------------


class MalformedQuery(ValueError):
    """A query string that `parse_query` refuses; the message says why (never the value)."""


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def parse_query(query_string: str, *, max_fields: int = 256) -> dict[str, tuple[str, ...]]:
    """Decode a query string strictly: name → every value, in order.

    Unlike `ConnectRequest.query` (lenient: never raises), this refuses what a
    browser never produces and a credential must not be guessed from: a ``%`` not
    followed by two hex digits, percent-escapes that decode to invalid UTF-8, and more
    than `max_fields` fields. Raises `MalformedQuery`.
    """
    if _BAD_ESCAPE.search(query_string):
        raise MalformedQuery("invalid percent-escape")
    try:
        pairs = parse_qsl(
            query_string, keep_blank_values=True, errors="strict", max_num_fields=max_fields
        )
    except UnicodeDecodeError:
        raise MalformedQuery("percent-escapes are not UTF-8") from None
    except ValueError:
        raise MalformedQuery(f"more than {max_fields} fields") from None
    result: dict[str, list[str]] = {}
    for name, value in pairs:
        result.setdefault(name, []).append(value)
    return {name: tuple(values) for name, values in result.items()}


# --- request id ---------------------------------------------------------------------------

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._:+/=@-]")


class RequestID:
    """Give each session a request id, echo it in the CONNECT response, bind it for logs.

    An incoming id (seeds 001, 002) in `header` is honoured when `honor_incoming`:
    every character outside ``[A-Za-z0-9._:+/=@-]`` is dropped (nothing that could end or
    forge a log line survives), then it is cut to `limit` characters (``None``: no
    limit). When none arrives, or nothing is left of it, a fresh ``uuid4().hex`` is
    minted. The id goes to ``ctx.request_id``, to the response headers (so it is on the
    200 and on any rejection further down the chain), and into structlog's contextvars
    for everything the rest of the chain logs.
    """

    def __init__(
        self, header: str = "x-request-id", limit: int | None = 128, *, honor_incoming: bool = True
    ) -> None:
        self.header = _header_name(header)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise UsageError(f"limit must be a positive int or None, got {limit!r}")
        if limit is not None and limit < 1:
            raise UsageError(f"limit must be a positive int or None, got {limit!r}")
        self.limit = limit
        self.honor_incoming = honor_incoming

    def __repr__(self) -> str:
        return (
            f"RequestID(header={self.header!r}, limit={self.limit!r},"
            f" honor_incoming={self.honor_incoming!r})"
        )

    def sanitize(self, incoming: str) -> str:
        """What is kept of an incoming id: safe characters only, at most `limit` of them."""
        cleaned = _ID_UNSAFE.sub("", incoming)
        return cleaned if self.limit is None else cleaned[: self.limit]

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        request_id = ""
        if self.honor_incoming:
            incoming = ctx.request.header(self.header)
            if incoming:
                request_id = self.sanitize(incoming)
        if not request_id:
            request_id = uuid.uuid4().hex
        ctx.request_id = request_id
        ctx.add_response_header(self.header, request_id)
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            await call_next(ctx)


# --- headers and session data -------------------------------------------------------------


class ExtractHeader:
    """Copy the first value of request header `name` into the typed key `key`.

    Nothing is set when the header is absent, so ``ctx.get(key, default)`` tells the
    two cases apart. Use `RequireHeader` to make a header mandatory.
    """

    def __init__(self, name: str, key: Key[str]) -> None:
        self.name = _header_name(name)
        if not isinstance(key, Key):
            raise UsageError(f"key must be a Key[str], got {key!r}")
        self.key = key

    def __repr__(self) -> str:
        return f"ExtractHeader({self.name!r}, {self.key!r})"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        value = ctx.request.header(self.name)
        if value is not None:
            ctx.set(self.key, value)
        await call_next(ctx)


class ExtractHeaders:
    """`ExtractHeader` for several headers at once: `mapping` is header name → key."""

    def __init__(self, mapping: Mapping[str, Key[str]]) -> None:
        if not mapping:
            raise UsageError("ExtractHeaders needs at least one header name → key")
        pairs: list[tuple[str, Key[str]]] = []
        for name, key in mapping.items():
            if not isinstance(key, Key):
                raise UsageError(f"the key for {name!r} must be a Key[str], got {key!r}")
            pairs.append((_header_name(name), key))
        self.pairs = tuple(pairs)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name!r}: {key!r}" for name, key in self.pairs)
        return f"ExtractHeaders({{{inner}}})"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        for name, key in self.pairs:
            value = ctx.request.header(name)
            if value is not None:
                ctx.set(key, value)
        await call_next(ctx)


class SessionData:
    """Put the user agent, the origin and the query parameters into typed keys.

    Sets `USER_AGENT` and `ORIGIN` when the client sent them, and `QUERY` (a read-only
    mapping of name → tuple of values). With `strict_query` (the default) the query is
    decoded by `parse_query`, and a malformed one is refused with 400 and logged;
    otherwise it is decoded leniently and never refused.
    """

    def __init__(self, *, strict_query: bool = True, max_query_fields: int = 256) -> None:
        if isinstance(max_query_fields, bool) or not isinstance(max_query_fields, int):
            raise UsageError(f"max_query_fields must be a positive int, got {max_query_fields!r}")
        if max_query_fields < 1:
            raise UsageError(f"max_query_fields must be a positive int, got {max_query_fields!r}")
        self.strict_query = strict_query
        self.max_query_fields = max_query_fields

    def __repr__(self) -> str:
        return (
            f"SessionData(strict_query={self.strict_query!r},"
            f" max_query_fields={self.max_query_fields!r})"
        )

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        if self.strict_query:
            try:
                query = parse_query(ctx.request.query_string, max_fields=self.max_query_fields)
            except MalformedQuery as exc:
                log.info("refused: malformed query string", problem=str(exc), **ctx.ids)
                raise Rejected(400, f"malformed query string: {exc}") from None
        else:
            query = {name: tuple(values) for name, values in ctx.request.query.items()}
        ctx.set(QUERY, types.MappingProxyType(query))
        user_agent = ctx.request.user_agent
        if user_agent is not None:
            ctx.set(USER_AGENT, user_agent)
        origin = ctx.request.origin
        if origin is not None:
            ctx.set(ORIGIN, origin)
        await call_next(ctx)


class RequireHeader:
    """Refuse a CONNECT whose header `name` is missing or does not match `pattern`.

    Seed 002 semantics: `pattern` is a regular expression searched in the (first) value,
    and without one any non-empty value passes; the refusal status is `status`
    (default 400); with `path_pattern` (a regular expression searched in the path) only
    matching paths are checked, the others pass untouched.
    """

    def __init__(
        self,
        name: str,
        pattern: str | re.Pattern[str] | None = None,
        status: int = 400,
        path_pattern: str | re.Pattern[str] | None = None,
    ) -> None:
        self.name = _header_name(name)
        self.pattern = _compile(pattern, "pattern")
        self.path_pattern = _compile(path_pattern, "path_pattern")
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise UsageError(f"status must be a 4xx or 5xx int, got {status!r}")
        self.status = status

    def __repr__(self) -> str:
        pattern = self.pattern.pattern if self.pattern else None
        path_pattern = self.path_pattern.pattern if self.path_pattern else None
        return (
            f"RequireHeader({self.name!r}, pattern={pattern!r}, status={self.status},"
            f" path_pattern={path_pattern!r})"
        )

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        if self.path_pattern is None or self.path_pattern.search(ctx.path):
            value = ctx.request.header(self.name)
            if value is None or (self.pattern is None and not value.strip()):
                log.info("refused: missing required header", header=self.name, **ctx.ids)
                raise Rejected(self.status, f"missing required header {self.name}")
            if self.pattern is not None and not self.pattern.search(value):
                log.info("refused: header does not match", header=self.name, **ctx.ids)
                raise Rejected(self.status, f"header {self.name} has an unacceptable value")
        await call_next(ctx)


def _compile(pattern: str | re.Pattern[str] | None, what: str) -> re.Pattern[str] | None:
    if pattern is None or isinstance(pattern, re.Pattern):
        return pattern
    if not isinstance(pattern, str):
        raise UsageError(f"{what} must be a regular expression string, got {pattern!r}")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"{what} {pattern!r} is not a valid regular expression: {exc}") from None


class PoweredBy:
    """Add an ``x-powered-by`` header to the CONNECT response (seed 003)."""

    def __init__(self, value: str = "aiowt") -> None:
        self.value = _header_value(value, "the x-powered-by value")

    def __repr__(self) -> str:
        return f"PoweredBy({self.value!r})"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        ctx.add_response_header("x-powered-by", self.value)
        await call_next(ctx)


# --- control flow -------------------------------------------------------------------------

Condition = Callable[[SessionContext], bool | Awaitable[bool]]
"""A predicate on the context for `If`; sync or async."""


class If:
    """Run `if_true` or `if_false` depending on ``condition(ctx)`` (seed 003).

    `condition` may be sync or async. A missing branch just passes to the rest of the
    chain. Both branches are ordinary middleware, so they reject or annotate the
    session exactly as they would unconditionally.
    """

    def __init__(
        self,
        condition: Condition,
        if_true: Middleware | None,
        if_false: Middleware | None = None,
    ) -> None:
        _check_callable(condition, "condition")
        if if_true is None and if_false is None:
            raise UsageError("If needs at least one of if_true and if_false")
        for branch, what in ((if_true, "if_true"), (if_false, "if_false")):
            if branch is not None:
                _check_callable(branch, what)
        self.condition = condition
        self.if_true = if_true
        self.if_false = if_false

    def __repr__(self) -> str:
        def show(branch: Middleware | None) -> str:
            return "None" if branch is None else repr(branch)

        return (
            f"If({_callable_name(self.condition)}, if_true={show(self.if_true)},"
            f" if_false={show(self.if_false)})"
        )

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        chosen = self.if_true if await _maybe_await(self.condition(ctx)) else self.if_false
        if chosen is None:
            await call_next(ctx)
        else:
            await chosen(ctx, call_next)


class ErrorHandler:
    """Turn exceptions raised further in, before the session is accepted, into statuses.

    `mapping` maps exception types to CONNECT statuses (the most specific base class
    in an exception's MRO wins). Anything else becomes 500 ``internal server error``.
    The reason the client sees is the status's standard phrase; with `verbose` it is
    the exception's type and message instead (for development: it can leak internals).
    Every mapped exception is logged, unknown ones with their traceback. `Rejected`
    passes through untouched, and once the session has been accepted (``ctx.session``
    is set) exceptions are re-raised: there is no CONNECT response left to change.
    """

    def __init__(
        self, mapping: Mapping[type[Exception], int] | None = None, *, verbose: bool = False
    ) -> None:
        table: dict[type[Exception], int] = {}
        for exc_type, status in (mapping or {}).items():
            if not isinstance(exc_type, type) or not issubclass(exc_type, Exception):
                raise UsageError(f"mapping keys must be Exception subclasses, got {exc_type!r}")
            if issubclass(exc_type, Rejected):
                raise UsageError("Rejected already carries its status; do not map it")
            if isinstance(status, bool) or not isinstance(status, int):
                raise UsageError(f"the status for {exc_type.__name__} must be an int")
            if not 400 <= status <= 599:
                raise UsageError(f"the status for {exc_type.__name__} must be 4xx or 5xx")
            table[exc_type] = status
        self.mapping: Mapping[type[Exception], int] = types.MappingProxyType(table)
        self.verbose = verbose

    def __repr__(self) -> str:
        inner = ", ".join(f"{t.__name__}: {s}" for t, s in self.mapping.items())
        return f"ErrorHandler({{{inner}}}, verbose={self.verbose!r})"

    def status_for(self, exc: BaseException) -> int | None:
        """The mapped status of `exc`, or ``None`` when no base class of it is mapped."""
        for cls in type(exc).__mro__:
            status = self.mapping.get(cls)
            if status is not None:
                return status
        return None

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        try:
            await call_next(ctx)
        except Rejected:
            raise
        except Exception as exc:
            if ctx.session is not None:
                raise
            status = self.status_for(exc)
            if status is None:
                log.exception("refused: unhandled exception before accept", **ctx.ids)
                status = 500
            else:
                log.info(
                    "refused: exception mapped to a status",
                    error_type=type(exc).__name__,
                    status=status,
                    **ctx.ids,
                )
            raise Rejected(status, self._reason(status, exc)) from exc

    def _reason(self, status: int, exc: Exception) -> str:
        if self.verbose:
            # The reason travels in a header: control characters are not allowed there,
            # and a value ending in whitespace makes HTTP/3 peers drop the connection.
            text = f"{type(exc).__name__}: {exc}"
            printable = "".join(c if c.isprintable() else " " for c in text)
            return " ".join(printable.split())[:500].rstrip()
        try:
            return http.HTTPStatus(status).phrase.lower()
        except ValueError:
            return "error"


# --- subprotocols -------------------------------------------------------------------------


def _split_members(value: str) -> list[str]:
    """Split a structured-field list on commas that are not inside a quoted string."""
    members: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            members.append("".join(current))
            current = []
            continue
        current.append(char)
    members.append("".join(current))
    return members


def _bare_item(member: str) -> str | None:
    """The string of one list member, without parameters; ``None`` if unreadable."""
    member = member.strip(" \t")
    if not member:
        return None
    if member[0] == '"':
        out: list[str] = []
        index = 1
        while index < len(member):
            char = member[index]
            if char == "\\" and index + 1 < len(member):
                out.append(member[index + 1])
                index += 2
                continue
            if char == '"':
                return "".join(out) or None
            out.append(char)
            index += 1
        return None  # unterminated string
    # Lenient: a bare token is taken as the string it spells; parameters are dropped.
    token = member.split(";", 1)[0].strip(" \t")
    if not token or any(c in token for c in ' \t"\\'):
        return None
    return token


def parse_available_protocols(values: list[str]) -> list[str]:
    """The protocols a client offers in ``wt-available-protocols``, in its order.

    The field is a structured-field list of strings (``"chat-v2", "chat-v1"``). The
    parse is lenient: bare tokens are accepted as strings, parameters are ignored,
    unreadable members are skipped, several header lines are one list.
    """
    # A dict keeps the client's order and drops repeats in linear time: the header can
    # hold thousands of members, and this runs on the event loop.
    offered: dict[str, None] = {}
    for member in _split_members(", ".join(values)):
        item = _bare_item(member)
        if item is not None:
            offered.setdefault(item)
    return list(offered)


_SF_STRING = re.compile(r"[\x20-\x7e]+")


def _sf_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Subprotocols:
    """Negotiate the application protocol: ``wt-available-protocols`` → ``wt-protocol``.

    The client offers a list; the server picks the first of `supported` (in the
    server's order of preference) that the client offered, sends it back as the
    ``wt-protocol`` response header (a structured-field string) and stores it under
    `SUBPROTOCOL`. With `required` (the default) a session without a common protocol,
    including a client that offered none, is refused with 406; otherwise it goes on
    with no protocol selected (a browser then reports ``transport.protocol == ""``).
    """

    def __init__(self, supported: list[str] | tuple[str, ...], *, required: bool = True) -> None:
        if isinstance(supported, str) or not supported:
            raise UsageError("Subprotocols needs a non-empty list of protocol names")
        for name in supported:
            # Printable ASCII is what an sf-string can hold; surrounding spaces would end
            # up in the 406 reason header, where HTTP/3 forbids them.
            if not isinstance(name, str) or not _SF_STRING.fullmatch(name) or name != name.strip():
                raise UsageError(
                    f"protocol names must be printable ASCII without surrounding spaces,"
                    f" got {name!r}"
                )
        if len(set(supported)) != len(supported):
            raise UsageError(f"protocol names must be unique, got {list(supported)!r}")
        self.supported: tuple[str, ...] = tuple(supported)
        self.required = required

    def __repr__(self) -> str:
        return f"Subprotocols({list(self.supported)!r}, required={self.required!r})"

    def choose(self, offered: list[str]) -> str | None:
        """The protocol to use for a client offering `offered`, or ``None``."""
        offered_set = set(offered)
        return next((name for name in self.supported if name in offered_set), None)

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        offered = parse_available_protocols(ctx.request.header_values("wt-available-protocols"))
        chosen = self.choose(offered)
        if chosen is None:
            if self.required:
                log.info("refused: no common subprotocol", offered=len(offered), **ctx.ids)
                raise Rejected(
                    406, "no supported subprotocol; this route speaks " + ", ".join(self.supported)
                )
        else:
            ctx.set(SUBPROTOCOL, chosen)
            ctx.add_response_header("wt-protocol", _sf_string(chosen))
        await call_next(ctx)
