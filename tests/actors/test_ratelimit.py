"""`RateLimitRegistry`: exact counts, idempotent acquire and release, a concurrent model check."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiowt.actors import ask
from aiowt.actors.ratelimit import (
    Acquire,
    AcquireAll,
    Claim,
    CountHolders,
    HolderCounts,
    LocalSlots,
    RateLimitRegistry,
    Release,
    ReleaseAll,
)
from tests.actors.test_service_harness import (
    Failed,
    Program,
    check_history,
    drive,
    recording,
    take_history,
)


async def test_acquire_up_to_the_limit_then_refuse() -> None:
    ref = RateLimitRegistry.start()
    try:
        assert await ask(ref, Acquire("ip", "10.0.0.1", "s1", 2))
        assert await ask(ref, Acquire("ip", "10.0.0.1", "s2", 2))
        assert not await ask(ref, Acquire("ip", "10.0.0.1", "s3", 2))
        # Other keys and scopes have their own counts.
        assert await ask(ref, Acquire("ip", "10.0.0.2", "s3", 2))
        assert await ask(ref, Acquire("route", "10.0.0.1", "s3", 1))
        assert await ask(ref, CountHolders("ip", "10.0.0.1")) == 2
        assert await ask(ref, HolderCounts()) == {
            "ip": {"10.0.0.1": 2, "10.0.0.2": 1},
            "route": {"10.0.0.1": 1},
        }
    finally:
        await ref.stop(block=False)


async def test_acquire_is_idempotent_per_holder() -> None:
    ref = RateLimitRegistry.start()
    try:
        for _ in range(3):
            assert await ask(ref, Acquire("ip", "k", "s1", 1))
        assert await ask(ref, CountHolders("ip", "k")) == 1
        assert not await ask(ref, Acquire("ip", "k", "s2", 1))
    finally:
        await ref.stop(block=False)


async def test_a_release_that_never_acquired_is_a_no_op_never_negative() -> None:
    ref = RateLimitRegistry.start()
    try:
        assert not await ask(ref, Release("ip", "k", "ghost"))
        assert await ask(ref, Acquire("ip", "k", "s1", 1))
        assert not await ask(ref, Release("ip", "k", "ghost"))
        assert await ask(ref, CountHolders("ip", "k")) == 1
        assert await ask(ref, Release("ip", "k", "s1"))
        assert not await ask(ref, Release("ip", "k", "s1"))  # twice: still zero
        assert await ask(ref, CountHolders("ip", "k")) == 0
        assert await ask(ref, HolderCounts()) == {}  # empty entries are deleted
        assert await ask(ref, Acquire("ip", "k", "s2", 1))
    finally:
        await ref.stop(block=False)


# --- the concurrent model check -------------------------------------------------------------

LIMITS = {"ip": 2, "route": 3}
SCOPES = sorted(LIMITS)
KEYS = ["a", "b"]


class RateLimitModel:
    def __init__(self) -> None:
        self.holders: dict[tuple[str, str], set[str]] = {}

    def apply(self, message: Any) -> object:
        if isinstance(message, Acquire):
            if message.limit < 1:
                return Failed("UsageError")
            holders = self.holders.setdefault((message.scope, message.key), set())
            if message.holder in holders:
                return True
            if len(holders) >= message.limit:
                if not holders:
                    del self.holders[(message.scope, message.key)]
                return False
            holders.add(message.holder)
            return True
        if isinstance(message, Release):
            holders = self.holders.get((message.scope, message.key), set())
            if message.holder not in holders:
                return False
            holders.discard(message.holder)
            if not holders:
                del self.holders[(message.scope, message.key)]
            return True
        if isinstance(message, AcquireAll):
            for index, claim in enumerate(message.claims):
                held = self.holders.get((claim.scope, claim.key), set())
                if message.holder not in held and len(held) >= claim.limit:
                    return index
            for claim in message.claims:
                self.holders.setdefault((claim.scope, claim.key), set()).add(message.holder)
            return None
        if isinstance(message, ReleaseAll):
            released = 0
            for claim in message.claims:
                held = self.holders.get((claim.scope, claim.key), set())
                if message.holder in held:
                    held.discard(message.holder)
                    released += 1
                    if not held:
                        del self.holders[(claim.scope, claim.key)]
            return released
        if isinstance(message, CountHolders):
            return len(self.holders.get((message.scope, message.key), ()))
        return Failed("UnknownMessage")

    def view(self) -> object:
        return sorted((slot, len(holders)) for slot, holders in self.holders.items())


def registry_view(actor: RateLimitRegistry) -> object:
    store = actor.store
    assert isinstance(store, LocalSlots)
    return sorted((slot, len(holders)) for slot, holders in store.holders.items())


def within_limits(view: object) -> None:
    assert isinstance(view, list)
    for (scope, _key), count in view:
        assert 0 < count <= LIMITS[scope], f"{scope} count {count} over its limit"


operation = st.one_of(
    st.tuples(st.just("acquire"), st.sampled_from(SCOPES), st.sampled_from(KEYS)),
    st.tuples(st.just("acquire all"), st.sampled_from(KEYS), st.sampled_from(KEYS)),
    st.tuples(st.just("release all"), st.sampled_from(KEYS), st.sampled_from(KEYS)),
    st.tuples(st.just("release"), st.sampled_from(SCOPES), st.sampled_from(KEYS)),
    st.tuples(st.just("count"), st.sampled_from(SCOPES), st.sampled_from(KEYS)),
    st.tuples(st.just("bad"), st.just(""), st.just("")),
)
session_ops = st.lists(st.tuples(operation, st.booleans()), max_size=8)


def session(holder: str, steps: list[tuple[tuple[str, str, str], bool]]) -> Program:
    """One session's traffic, then its end: every slot it might hold is released."""
    for (kind, scope, key), by_tell in steps:
        if kind == "acquire":
            yield Acquire(scope, key, holder, LIMITS[scope]), "ask"
        elif kind in ("acquire all", "release all"):
            # One admission's claims: an ip key and a route key (scope, key reused).
            claims = (Claim("ip", scope, LIMITS["ip"]), Claim("route", key, LIMITS["route"]))
            if kind == "acquire all":
                yield AcquireAll(holder, claims), "ask"
            else:
                yield ReleaseAll(holder, claims), "tell" if by_tell else "ask"
        elif kind == "release":
            yield Release(scope, key, holder), "tell" if by_tell else "ask"
        elif kind == "count":
            yield CountHolders(scope, key), "ask"
        else:
            yield Acquire("ip", "a", holder, 0), "tell" if by_tell else "ask"
    for scope in SCOPES:
        for key in KEYS:
            yield Release(scope, key, holder), "tell"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    task_sessions=st.lists(session_ops, min_size=1, max_size=8),
    thread_sessions=st.lists(session_ops, max_size=3),
)
def test_concurrent_sessions_match_the_sequential_model(
    task_sessions: list[list[Any]], thread_sessions: list[list[Any]]
) -> None:
    async def scenario() -> None:
        ref = recording(RateLimitRegistry, registry_view).start()
        try:
            sents = await drive(
                ref,
                [session(f"t{n}", steps) for n, steps in enumerate(task_sessions)],
                [session(f"th{n}", steps) for n, steps in enumerate(thread_sessions)],
            )
            check_history(await take_history(ref), sents, RateLimitModel(), within_limits)
            assert await ask(ref, HolderCounts()) == {}, "a count is not back to zero"
        finally:
            await ref.stop(block=False)

    asyncio.run(scenario())
