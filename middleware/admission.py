"""Admission: every session cap of a chain, checked and taken in one message, or none.

The session limits (`RateLimit`, `RouteRateLimit`, `PerPathRateLimit`, `MaxSessions`)
are `SessionLimit`s: each states the slot it needs (a `Claim`) and how it refuses. When
a chain is built, its limits are listed in chain order (`Admission`); the first of them
to run takes the slots of all of them, itself and those further in, with one
`AcquireAll` to the registry they share (one round trip; with a shared store, one atomic
script), and gives them all back when the session ends. The limits further in then find
their slot taken and simply go on.

Refused, the session gets the refusal of the first limit in chain order whose cap is
reached (its status, reason, ``retry-after``, its name as the rejecting middleware); no
slot is left taken. So a session over an inner limit is refused before the middleware
between the two run (an authenticator, say): refusing costs the server less, and the
client learns the server is full before it learns its token is wrong.

A limit outside any chain's list (one inside an `If` branch, or called on its own) takes
its own slot when it runs, as a list of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import pykka

from aiowt.actors import RateLimitRegistry, ask_future, tell_quietly
from aiowt.actors.ratelimit import AcquireAll, Claim, ReleaseAll
from aiowt.transport import Key, Rejected, SessionContext

__all__ = ["Admission", "SessionLimit", "admitted"]


@runtime_checkable
class SessionLimit(Protocol):
    """A cap on concurrent sessions, admitted through a `RateLimitRegistry`."""

    def claim(self, ctx: SessionContext) -> Claim:
        """The slot this session needs."""

    def refusal(self, ctx: SessionContext) -> Rejected:
        """What the session gets when the cap is reached (the limit also reports it)."""

    def registry(self) -> pykka.ActorRef[RateLimitRegistry]:
        """The registry the slot is taken in."""


class Admission:
    """The session limits of one chain, in chain order."""

    __slots__ = ("limits",)

    def __init__(self, limits: Sequence[SessionLimit]) -> None:
        self.limits = tuple(limits)

    def __repr__(self) -> str:
        return f"Admission({', '.join(type(limit).__name__ for limit in self.limits)})"

    def __bool__(self) -> bool:
        return bool(self.limits)


ADMISSION: Key[Admission] = Key("aiowt.admission", Admission(()))
"""The admission of the chain running this session (set by the chain)."""

_TAKEN: Key[frozenset[int]] = Key("aiowt.admitted", frozenset())
"""Ids of the limits whose slots this session holds (taken by an outer limit)."""


def admitted(ctx: SessionContext, limit: SessionLimit) -> _Gate:
    """An async context manager around the rest of the chain: the session holds `limit`'s
    slot inside it (and, if `limit` is the first of its chain's limits to run, the slots
    of the ones after it), or `limit`'s refusal is raised."""
    return _Gate(ctx, limit)


class _Gate:
    __slots__ = ("_ctx", "_held", "_limit")

    def __init__(self, ctx: SessionContext, limit: SessionLimit) -> None:
        self._ctx = ctx
        self._limit = limit
        self._held: list[tuple[pykka.ActorRef[Any], tuple[Claim, ...]]] = []

    async def __aenter__(self) -> None:
        ctx, limit = self._ctx, self._limit
        if id(limit) in ctx.get(_TAKEN):
            return  # an outer limit of the chain took this one's slot with its own
        planned = ctx.get(ADMISSION).limits
        limits = planned[planned.index(limit) :] if limit in planned else (limit,)
        claims = [(entry, entry.claim(ctx)) for entry in limits]
        # One message per registry: with the server's (the default) that is one.
        by_registry: dict[int, tuple[pykka.ActorRef[Any], list[tuple[SessionLimit, Claim]]]] = {}
        for entry, claim in claims:
            ref = entry.registry()
            by_registry.setdefault(id(ref), (ref, []))[1].append((entry, claim))
        for ref, group in by_registry.values():
            wanted = tuple(claim for _, claim in group)
            refused = await _granted(ctx, ref, wanted)
            if refused is not None:
                await self._release()
                raise _refusal(ctx, group[refused][0])
            self._held.append((ref, wanted))
        ctx.set(_TAKEN, ctx.get(_TAKEN) | {id(entry) for entry in limits})

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._release()

    async def _release(self) -> None:
        held, self._held = self._held, []
        for ref, claims in held:
            tell_quietly(ref, ReleaseAll(self._ctx.session_id, claims))


async def _granted(
    ctx: SessionContext, ref: pykka.ActorRef[Any], claims: tuple[Claim, ...]
) -> int | None:
    """Acquire; if cancelled meanwhile, undo it (it may still be granted).

    The undo is a tell from the same thread as the ask, so the registry handles it
    after the acquire; an undo of something never granted is a no-op.
    """
    try:
        return await ask_future(ref, AcquireAll(ctx.session_id, claims))
    except BaseException:
        tell_quietly(ref, ReleaseAll(ctx.session_id, claims))
        raise


def _refusal(ctx: SessionContext, limit: SessionLimit) -> Rejected:
    rejection = limit.refusal(ctx)
    # The chain names the innermost step a refusal passes through; this one is the
    # limit's own, whichever limit of the chain took the slots.
    rejection.middleware = type(limit).__name__
    return rejection
