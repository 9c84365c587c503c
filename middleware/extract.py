"""Request data into typed context keys: headers (`ExtractHeader`), and `SessionData`."""

from __future__ import annotations

import types
from collections.abc import Mapping

import structlog

from aiowt.transport import Key, MalformedQuery, Rejected, SessionContext, UsageError
from aiowt.transport.request import parse_query

from ._options import header_name
from .chain import CallNext
from .keys import ORIGIN, QUERY, USER_AGENT

__all__ = ["ExtractHeader", "ExtractHeaders", "SessionData"]

log = structlog.get_logger("aiowt.middleware")


class ExtractHeader:
    """Copy the first value of request header `name` into the typed key `key`.

    Nothing is set when the header is absent, so ``ctx.get(key, default)`` tells the
    two cases apart. Use `RequireHeader` to make a header mandatory.
    """

    def __init__(self, name: str, key: Key[str]) -> None:
        self.name = header_name(name)
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
            pairs.append((header_name(name), key))
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
