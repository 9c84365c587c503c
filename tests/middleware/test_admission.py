"""Admission: a chain's session limits are checked and taken in one message, or none."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aiowt.actors import RateLimitRegistry, ask
from aiowt.actors.ratelimit import AcquireAll, HolderCounts, ReleaseAll
from aiowt.middleware import If, MaxSessions, PerPathRateLimit, RateLimit
from aiowt.middleware.chain import CallNext, build_chain
from aiowt.transport import Rejected, SessionContext
from tests.middleware.test_limits import accepting, make_ctx


class CountingRegistry(RateLimitRegistry):
    """A registry that counts the messages it handles, by type."""

    def __init__(self) -> None:
        super().__init__()
        self.handled: dict[str, int] = {}

    def on_receive(self, message: Any) -> Any:
        name = type(message).__name__
        self.handled[name] = self.handled.get(name, 0) + 1
        return super().on_receive(message)


class Ran:
    """A middleware between the limits that records the sessions it saw."""

    def __init__(self) -> None:
        self.sessions: list[str] = []

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        self.sessions.append(ctx.session_id)
        await call_next(ctx)


async def _handled(ref: Any) -> dict[str, int]:
    await ask(ref, HolderCounts())  # everything sent before is handled by now
    counts = dict(ref._actor_weakref().handled)
    counts.pop("HolderCounts", None)
    return counts


async def test_one_message_admits_every_limit_of_the_chain_and_one_releases_them() -> None:
    ref = CountingRegistry.start()
    try:
        between = Ran()
        limits = [
            RateLimit(5, registry=ref),
            MaxSessions(5, slots=ref),
            PerPathRateLimit(5, registry=ref),
        ]
        chain = build_chain([limits[0], between, limits[1], limits[2]], accepting())
        for _ in range(3):
            await chain(make_ctx())
        assert await _handled(ref) == {"AcquireAll": 3, "ReleaseAll": 3}
        assert await ask(ref, HolderCounts()) == {}
        assert len(between.sessions) == 3
    finally:
        await ref.stop(block=False)


async def test_a_refusal_by_an_inner_limit_takes_nothing_and_names_that_limit() -> None:
    ref = RateLimitRegistry.start()
    try:
        between = Ran()
        cap = MaxSessions(1, slots=ref, retry_after=7)
        chain = build_chain([RateLimit(5, registry=ref), between, cap], accepting())
        holding = asyncio.Event()
        release = asyncio.Event()

        async def hold(ctx: SessionContext, session: Any) -> None:
            holding.set()
            await release.wait()

        first = asyncio.create_task(build_chain([*chain.middleware], accepting(hold))(make_ctx()))
        await asyncio.wait_for(holding.wait(), 5)
        before = await ask(ref, HolderCounts())
        with pytest.raises(Rejected) as refused:
            await chain(make_ctx(ip="10.0.0.9"))
        assert refused.value.status == 503
        assert refused.value.middleware == "MaxSessions"
        assert refused.value.headers == (("retry-after", "7"),)
        # Refused before the middleware between the two limits ran, holding nothing.
        assert len(between.sessions) == 1
        assert await ask(ref, HolderCounts()) == before
        release.set()
        await asyncio.wait_for(first, 5)
        assert await ask(ref, HolderCounts()) == {}
    finally:
        await ref.stop(block=False)


async def test_a_limit_in_a_branch_admits_on_its_own() -> None:
    ref = CountingRegistry.start()
    try:
        branch = PerPathRateLimit(1, registry=ref)
        chain = build_chain([RateLimit(5, registry=ref), If(lambda ctx: True, branch)], accepting())
        assert [type(limit).__name__ for limit in chain.admission.limits] == ["RateLimit"]
        await chain(make_ctx())
        assert await _handled(ref) == {"AcquireAll": 2, "ReleaseAll": 2}
    finally:
        await ref.stop(block=False)


async def test_limits_given_different_registries_admit_in_each() -> None:
    one, two = RateLimitRegistry.start(), RateLimitRegistry.start()
    try:
        seen: dict[str, Any] = {}

        async def inside(ctx: SessionContext, session: Any) -> None:
            seen["one"] = await ask(one, HolderCounts())
            seen["two"] = await ask(two, HolderCounts())

        chain = build_chain(
            [RateLimit(1, registry=one), MaxSessions(1, slots=two)], accepting(inside)
        )
        await chain(make_ctx())
        assert seen == {"one": {"ip": {"10.0.0.1": 1}}, "two": {"sessions": {"": 1}}}
        assert await ask(one, HolderCounts()) == await ask(two, HolderCounts()) == {}
        # Refused in the second registry: the first gives its slot back.
        await ask(two, AcquireAll("someone", (MaxSessions(1).claim(make_ctx()),)))
        with pytest.raises(Rejected):
            await chain(make_ctx())
        assert await ask(one, HolderCounts()) == {}
        await ask(two, ReleaseAll("someone", (MaxSessions(1).claim(make_ctx()),)))
    finally:
        await one.stop(block=False)
        await two.stop(block=False)


async def test_cancelled_while_admitting_leaves_no_slot_behind() -> None:
    ref = RateLimitRegistry.start()
    try:
        chain = build_chain(
            [RateLimit(5, registry=ref), MaxSessions(5, slots=ref)],
            accepting(lambda ctx, session: asyncio.sleep(10)),
        )
        for yields in range(6):  # while admitting, and once admitted
            task = asyncio.create_task(chain(make_ctx()))
            for _ in range(yields):
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await ask(ref, HolderCounts()) == {}, f"leaked after {yields} yields"
    finally:
        await ref.stop(block=False)
