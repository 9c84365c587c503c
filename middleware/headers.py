"""Header rules on the handshake: `RequireHeader` on the request, `PoweredBy` on the response."""

from __future__ import annotations

import re

import structlog

from aiowt.transport import Rejected, SessionContext, UsageError

from ._options import check_regex, header_name, header_value
from .chain import CallNext

__all__ = ["PoweredBy", "RequireHeader"]

log = structlog.get_logger("aiowt.middleware")


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
        self.name = header_name(name)
        self.pattern = check_regex(pattern, "pattern")
        self.path_pattern = check_regex(path_pattern, "path_pattern")
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


class PoweredBy:
    """Add an ``x-powered-by`` header to the CONNECT response (seed 003)."""

    def __init__(self, value: str = "aiowt") -> None:
        self.value = header_value(value, "the x-powered-by value")

    def __repr__(self) -> str:
        return f"PoweredBy({self.value!r})"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        ctx.add_response_header("x-powered-by", self.value)
        await call_next(ctx)
