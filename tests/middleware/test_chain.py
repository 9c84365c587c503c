"""The middleware chain: order, exceptions, the call_next guard, naming."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiowt.middleware.chain import (
    CallNext,
    Chain,
    Middleware,
    build_chain,
    middleware_name,
)
from aiowt.transport.context import SessionContext
from aiowt.transport.errors import Rejected, UsageError
from aiowt.transport.request import ConnectRequest


def make_ctx(path: str = "/chat") -> SessionContext:
    return SessionContext(
        request=ConnectRequest(
            method="CONNECT",
            scheme="https",
            authority="localhost:4433",
            path=path,
            query_string="",
            protocol="webtransport",
            headers=(),
            remote_addr=("127.0.0.1", 50000),
        )
    )


class Recording:
    """A middleware that appends its name to a trace before and after call_next."""

    def __init__(self, name: str, trace: list[str]) -> None:
        self.name = name
        self.trace = trace

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        self.trace.append(self.name)
        try:
            await call_next(ctx)
        finally:
            self.trace.append(f"{self.name}-after")

    def __repr__(self) -> str:
        return f"Recording({self.name!r})"


def recording_terminal(trace: list[str], name: str = "h") -> CallNext:
    async def terminal(ctx: SessionContext) -> None:
        trace.append(name)

    return terminal


# --- order ------------------------------------------------------------------------------


async def test_order_follows_seed_000() -> None:
    # use(A); use(B); route(path, handler, C, D)
    trace: list[str] = []
    global_mw = [Recording("A", trace), Recording("B", trace)]
    route_mw = [Recording("C", trace), Recording("D", trace)]
    chain = build_chain([*global_mw, *route_mw], recording_terminal(trace, "handler"))

    await chain(make_ctx())

    assert trace == [
        "A",
        "B",
        "C",
        "D",
        "handler",
        "D-after",
        "C-after",
        "B-after",
        "A-after",
    ]


async def test_empty_chain_runs_only_the_terminal() -> None:
    trace: list[str] = []
    chain = build_chain([], recording_terminal(trace))
    await chain(make_ctx())
    assert trace == ["h"]
    assert chain.middleware == ()
    assert chain  # truthy even when empty


async def test_the_same_context_reaches_every_step() -> None:
    seen: list[SessionContext] = []

    async def mw(ctx: SessionContext, call_next: CallNext) -> None:
        seen.append(ctx)
        await call_next(ctx)

    async def terminal(ctx: SessionContext) -> None:
        seen.append(ctx)

    ctx = make_ctx()
    await build_chain([mw, mw], terminal)(ctx)
    assert seen == [ctx, ctx, ctx]


async def test_a_chain_can_run_many_sessions_at_once() -> None:
    # The call_next guard is per session: two sessions inside the chain at the same
    # time must not trip each other's guard.
    trace: list[str] = []
    release = asyncio.Event()
    inside = 0
    both_inside = asyncio.Event()

    async def terminal(ctx: SessionContext) -> None:
        nonlocal inside
        inside += 1
        if inside == 2:
            both_inside.set()
        await release.wait()
        trace.append(ctx.path)

    chain = build_chain([Recording("A", []), Recording("B", [])], terminal)

    async def run(path: str) -> None:
        await chain(make_ctx(path))

    first = asyncio.create_task(run("/one"))
    second = asyncio.create_task(run("/two"))
    await both_inside.wait()
    release.set()
    await asyncio.gather(first, second)
    assert sorted(trace) == ["/one", "/two"]


# --- exceptions -------------------------------------------------------------------------


async def test_terminal_exception_runs_every_after_part_and_propagates() -> None:
    trace: list[str] = []
    failure = RuntimeError("handler failed")

    async def terminal(ctx: SessionContext) -> None:
        trace.append("h")
        raise failure

    chain = build_chain([Recording(name, trace) for name in "ABCD"], terminal)
    with pytest.raises(RuntimeError) as caught:
        await chain(make_ctx())

    assert caught.value is failure
    assert trace == ["A", "B", "C", "D", "h", "D-after", "C-after", "B-after", "A-after"]


async def test_rejection_stops_the_chain_and_unwinds_the_outer_middleware() -> None:
    trace: list[str] = []

    async def deny(ctx: SessionContext, call_next: CallNext) -> None:
        trace.append("deny")
        raise Rejected(403, "forbidden")

    chain = build_chain(
        [Recording("A", trace), deny, Recording("C", trace)], recording_terminal(trace)
    )
    with pytest.raises(Rejected) as caught:
        await chain(make_ctx())

    assert caught.value.status == 403
    assert trace == ["A", "deny", "A-after"]


async def test_returning_without_call_next_skips_the_rest_without_error() -> None:
    # The chain itself does not judge this; the server's boundary treats it as a
    # rejection because nothing accepted the session.
    trace: list[str] = []

    async def silent(ctx: SessionContext, call_next: CallNext) -> None:
        trace.append("silent")

    chain = build_chain([Recording("A", trace), silent], recording_terminal(trace))
    await chain(make_ctx())
    assert trace == ["A", "silent", "A-after"]


# --- the call_next guard ----------------------------------------------------------------


async def test_calling_call_next_twice_is_a_usage_error() -> None:
    trace: list[str] = []

    async def twice(ctx: SessionContext, call_next: CallNext) -> None:
        await call_next(ctx)
        await call_next(ctx)

    chain = build_chain([twice, Recording("B", trace)], recording_terminal(trace))
    with pytest.raises(UsageError, match="called call_next twice"):
        await chain(make_ctx())
    # The rest of the chain, and so the accepting step, ran once only.
    assert trace == ["B", "h", "B-after"]


async def test_the_error_names_the_offending_middleware() -> None:
    class Retry:
        async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
            try:
                await call_next(ctx)
            except RuntimeError:
                await call_next(ctx)

    async def failing(ctx: SessionContext) -> None:
        raise RuntimeError("boom")

    with pytest.raises(UsageError, match="middleware Retry called call_next twice"):
        await build_chain([Retry()], failing)(make_ctx())


async def test_calling_call_next_after_returning_is_a_usage_error() -> None:
    kept: list[CallNext] = []
    trace: list[str] = []

    async def leaky(ctx: SessionContext, call_next: CallNext) -> None:
        kept.append(call_next)

    ctx = make_ctx()
    await build_chain([leaky], recording_terminal(trace))(ctx)
    with pytest.raises(UsageError, match="after it returned"):
        await kept[0](ctx)
    assert trace == []


async def test_a_pass_through_that_returns_call_next_awaitable_works() -> None:
    trace: list[str] = []

    def passthrough(ctx: SessionContext, call_next: CallNext) -> Awaitable[None]:
        return call_next(ctx)

    await build_chain([passthrough], recording_terminal(trace))(make_ctx())
    assert trace == ["h"]


async def test_a_sync_middleware_returning_none_is_a_usage_error() -> None:
    def sync(ctx: SessionContext, call_next: CallNext) -> None:
        return None

    chain = build_chain([sync], recording_terminal([]))  # type: ignore[list-item]
    with pytest.raises(UsageError, match="not an awaitable"):
        await chain(make_ctx())


# --- building -----------------------------------------------------------------------------


def test_build_rejects_non_middleware() -> None:
    class Auth:
        async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
            await call_next(ctx)

    async def one_argument(ctx: SessionContext) -> None:
        pass

    terminal = recording_terminal([])
    with pytest.raises(UsageError, match=r"pass an instance, e\.g\. .*Auth\(\.\.\.\)"):
        build_chain([Auth], terminal)  # type: ignore[list-item]
    with pytest.raises(UsageError, match="async callable"):
        build_chain(["not a middleware"], terminal)  # type: ignore[list-item]
    with pytest.raises(UsageError, match=r"cannot be called as \(ctx, call_next\)"):
        build_chain([one_argument], terminal)  # type: ignore[list-item]
    with pytest.raises(UsageError, match="terminal"):
        build_chain([], None)  # type: ignore[arg-type]


async def test_the_chain_is_frozen_after_building() -> None:
    trace: list[str] = []
    middleware: list[Middleware] = [Recording("A", trace)]
    chain = build_chain(middleware, recording_terminal(trace))
    middleware.append(Recording("B", trace))

    await chain(make_ctx())

    assert trace == ["A", "h", "A-after"]
    assert isinstance(chain.middleware, tuple)
    assert len(chain.middleware) == 1
    with pytest.raises(AttributeError):
        chain._middleware = ()
    with pytest.raises(AttributeError):
        chain.anything = 1


def test_chain_repr_and_names() -> None:
    async def terminal(ctx: SessionContext) -> None:
        pass

    chain = build_chain([Recording("A", []), Recording("B", [])], terminal)
    assert isinstance(chain, Chain)
    assert chain.names == ("Recording", "Recording")
    assert repr(chain).startswith("Chain(Recording → Recording → ")
    assert repr(chain).endswith("terminal)")


async def module_level_middleware(ctx: SessionContext, call_next: CallNext) -> None:
    await call_next(ctx)


def test_middleware_name() -> None:
    class Holder:
        async def method(self, ctx: SessionContext, call_next: CallNext) -> None:
            await call_next(ctx)

    assert middleware_name(module_level_middleware) == "module_level_middleware"
    assert middleware_name(Recording("x", [])) == "Recording"
    assert middleware_name(functools.partial(module_level_middleware)) == (
        "module_level_middleware"
    )
    assert middleware_name(Holder().method) == ("test_middleware_name.<locals>.Holder.method")
    # Stable: the same middleware always gets the same name.
    assert middleware_name(Recording("y", [])) == middleware_name(Recording("z", []))


# --- the property -------------------------------------------------------------------------


@given(
    names=st.lists(st.text(alphabet="abcdefgh", min_size=1, max_size=4), max_size=25),
    terminal_fails=st.booleans(),
)
async def test_any_chain_runs_befores_terminal_then_afters_reversed(
    names: list[str], terminal_fails: bool
) -> None:
    trace: list[str] = []

    async def terminal(ctx: SessionContext) -> None:
        trace.append("<terminal>")
        if terminal_fails:
            raise RuntimeError("terminal failed")

    chain = build_chain([Recording(name, trace) for name in names], terminal)
    if terminal_fails:
        with pytest.raises(RuntimeError):
            await chain(make_ctx())
    else:
        await chain(make_ctx())

    assert trace == [*names, "<terminal>", *(f"{name}-after" for name in reversed(names))]
