"""`RequestID`: an id for each session, echoed in the CONNECT response and bound for logs."""

from __future__ import annotations

import re
import uuid

import structlog

from aiowt.transport import SessionContext, UsageError

from ._options import header_name
from .chain import CallNext

__all__ = ["RequestID"]


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
        self.header = header_name(header)
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
