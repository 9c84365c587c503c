"""Control flow in the chain: run middleware conditionally (`If`), map exceptions to statuses
(`ErrorHandler`)."""

from __future__ import annotations

import http
import types
from collections.abc import Awaitable, Callable, Mapping

import structlog

from aiowt.actors import Services
from aiowt.transport import Rejected, SessionContext, UsageError

from ._options import callable_name, check_callable, maybe_await
from .chain import CallNext, Closable, Middleware, UsesServices

__all__ = ["Condition", "ErrorHandler", "If"]

log = structlog.get_logger("aiowt.middleware")


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
        check_callable(condition, "condition")
        if if_true is None and if_false is None:
            raise UsageError("If needs at least one of if_true and if_false")
        for branch, what in ((if_true, "if_true"), (if_false, "if_false")):
            if branch is not None:
                check_callable(branch, what)
        self.condition = condition
        self.if_true = if_true
        self.if_false = if_false

    def __repr__(self) -> str:
        def show(branch: Middleware | None) -> str:
            return "None" if branch is None else repr(branch)

        return (
            f"If({callable_name(self.condition)}, if_true={show(self.if_true)},"
            f" if_false={show(self.if_false)})"
        )

    def use_services(self, services: Services, name: str) -> None:
        """Hand the server's services to the branches that use them."""
        for label, branch in (("true", self.if_true), ("false", self.if_false)):
            if isinstance(branch, UsesServices):
                branch.use_services(services, f"{name}.{label}")

    async def aclose(self) -> None:
        """Close the branches that hold something (see `Closable`)."""
        for branch in (self.if_true, self.if_false):
            if isinstance(branch, Closable):
                await branch.aclose()

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        chosen = self.if_true if await maybe_await(self.condition(ctx)) else self.if_false
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
