"""Unit tests of the authentication middleware, one layer at a time, with a fake call_next."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from aiowt.middleware.auth import (
    BasicAuth,
    BearerAuth,
    QueryAuth,
    RequireKey,
    StaticTokens,
    secrets_equal,
)
from aiowt.middleware.chain import Middleware
from aiowt.middleware.keys import AUTH_SCHEME, REMOTE_USER
from aiowt.transport.context import SessionContext
from aiowt.transport.errors import Rejected, UsageError
from aiowt.transport.request import ConnectRequest

SECRET = "s3cret-token"


def make_ctx(headers: Sequence[tuple[str, str]] = (), *, query: str = "") -> SessionContext:
    return SessionContext(
        request=ConnectRequest(
            method="CONNECT",
            scheme="https",
            authority="localhost:4433",
            path="/chat",
            query_string=query,
            protocol="webtransport",
            headers=tuple(headers),
            remote_addr=("127.0.0.1", 50000),
        )
    )


async def admitted(mw: Middleware, ctx: SessionContext) -> SessionContext:
    calls: list[SessionContext] = []

    async def call_next(next_ctx: SessionContext) -> None:
        calls.append(next_ctx)

    await mw(ctx, call_next)
    assert calls == [ctx]
    return ctx


async def refused(mw: Middleware, ctx: SessionContext) -> Rejected:
    async def call_next(next_ctx: SessionContext) -> None:
        raise AssertionError("call_next ran for a refused session")

    with capture_logs() as logs, pytest.raises(Rejected) as caught:
        await mw(ctx, call_next)
    # Secrets never reach a log line, whatever went wrong.
    assert SECRET not in repr(logs)
    assert logs, "every refusal is logged"
    return caught.value


def challenge(error: Rejected) -> str | None:
    return dict(error.headers).get("www-authenticate")


tokens = StaticTokens({SECRET: "alice", "other-token": "bob"})


# --- helpers ------------------------------------------------------------------------------


def test_secrets_equal() -> None:
    assert secrets_equal("abc", "abc")
    assert secrets_equal(b"abc", "abc")
    assert not secrets_equal("abc", "abd")
    assert not secrets_equal("abc", "abcd")


def test_static_tokens_find_the_identity_and_hide_the_secrets() -> None:
    assert tokens(SECRET) == "alice"
    assert tokens("other-token") == "bob"
    assert tokens("nope") is None
    assert repr(tokens) == "StaticTokens(<2 tokens>)"
    assert SECRET not in repr(vars(tokens) if hasattr(tokens, "__dict__") else tokens)
    with pytest.raises(UsageError):
        StaticTokens({})
    with pytest.raises(UsageError):
        StaticTokens({"t": None})


# --- BearerAuth ---------------------------------------------------------------------------


async def test_bearer_admits_a_valid_token_and_sets_the_identity() -> None:
    for value in (f"Bearer {SECRET}", f"bearer {SECRET}", f"BEARER   {SECRET}"):
        ctx = await admitted(BearerAuth(tokens), make_ctx([("authorization", value)]))
        assert ctx.identity == "alice"
        assert ctx.get(AUTH_SCHEME) == "bearer"


@pytest.mark.parametrize(
    ("headers", "reason", "expected_challenge"),
    [
        ([], "missing bearer token", "Bearer"),
        ([("authorization", f"Basic {SECRET}")], "authorization scheme is not Bearer", "Bearer"),
        ([("authorization", "Bearer")], "malformed authorization header", "invalid_request"),
        ([("authorization", "Bearer a b")], "malformed authorization header", "invalid_request"),
        ([("authorization", "Bearer é")], "malformed authorization header", "invalid_request"),
        (
            [("authorization", f"Bearer {SECRET}")] * 2,
            "malformed authorization header",
            "invalid_request",
        ),
        ([("authorization", "Bearer wrong")], "invalid bearer token", "invalid_token"),
        ([("authorization", "Bearer " + "x" * 15000)], "invalid bearer token", "invalid_token"),
    ],
)
async def test_bearer_refusals_are_401_with_a_challenge(
    headers: list[tuple[str, str]], reason: str, expected_challenge: str
) -> None:
    error = await refused(BearerAuth(tokens), make_ctx(headers))
    assert (error.status, error.reason) == (401, reason)
    assert expected_challenge in (challenge(error) or "")
    assert (challenge(error) or "").startswith("Bearer")


async def test_bearer_validate_may_be_async_and_its_failures_refuse() -> None:
    async def lookup(token: str) -> str | None:
        await asyncio.sleep(0)
        return {"tok": "carol"}.get(token)

    ctx = await admitted(BearerAuth(lookup), make_ctx([("authorization", "Bearer tok")]))
    assert ctx.identity == "carol"

    def broken(token: str) -> object:
        raise RuntimeError(f"backend down while checking {token}")

    error = await refused(BearerAuth(broken), make_ctx([("authorization", f"Bearer {SECRET}")]))
    assert error.status == 401

    def forbidden(token: str) -> object:
        raise Rejected(403, "account suspended")

    error = await refused(BearerAuth(forbidden), make_ctx([("authorization", "Bearer x")]))
    assert (error.status, error.reason) == (403, "account suspended")
    error = await refused(BearerAuth(lambda t: False), make_ctx([("authorization", "Bearer x")]))
    assert error.status == 401


def test_bearer_realm_and_repr() -> None:
    mw = BearerAuth(tokens, realm="chat")
    assert repr(mw) == "BearerAuth(StaticTokens(<2 tokens>), realm='chat')"
    with pytest.raises(UsageError):
        BearerAuth(tokens, realm='bad"realm')
    with pytest.raises(UsageError):
        BearerAuth(StaticTokens)  # type: ignore[arg-type]


async def test_bearer_realm_is_in_the_challenge() -> None:
    error = await refused(BearerAuth(tokens, realm="chat"), make_ctx())
    assert challenge(error) == 'Bearer realm="chat"'


# --- QueryAuth ----------------------------------------------------------------------------


async def test_query_auth_admits_a_valid_token() -> None:
    ctx = await admitted(QueryAuth("token", tokens), make_ctx(query=f"room=1&token={SECRET}"))
    assert ctx.identity == "alice"
    assert ctx.get(AUTH_SCHEME) == "query"


@pytest.mark.parametrize(
    ("query", "status", "reason"),
    [
        ("", 401, "missing token in query parameter 'token'"),
        ("token=", 401, "missing token in query parameter 'token'"),
        ("token=nope", 401, "invalid token"),
        (f"token={SECRET}&token=x", 400, "query parameter 'token' given more than once"),
        ("token=%zz", 400, "malformed query string: invalid percent-escape"),
        ("token=%ff", 400, "malformed query string: percent-escapes are not UTF-8"),
    ],
)
async def test_query_auth_refusals(query: str, status: int, reason: str) -> None:
    error = await refused(QueryAuth("token", tokens), make_ctx(query=query))
    assert (error.status, error.reason) == (status, reason)
    if status == 401:
        assert (challenge(error) or "").startswith("Bearer")


def test_query_auth_options() -> None:
    assert repr(QueryAuth("t", tokens)) == "QueryAuth('t', StaticTokens(<2 tokens>))"
    for bad in ("", "tok\n", " token"):
        with pytest.raises(UsageError):
            QueryAuth(bad, tokens)


# --- RequireKey ---------------------------------------------------------------------------


async def test_require_key_admits_the_key() -> None:
    mw = RequireKey("X-API-Key", SECRET, identity="service-a")
    ctx = await admitted(mw, make_ctx([("x-api-key", SECRET)]))
    assert (ctx.identity, ctx.get(AUTH_SCHEME)) == ("service-a", "key")


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        ([], 401, "missing API key"),
        ([("x-api-key", "wrong")], 401, "invalid API key"),
        ([("x-api-key", SECRET[:-1])], 401, "invalid API key"),
        (
            [("x-api-key", SECRET), ("x-api-key", SECRET)],
            400,
            "header x-api-key given more than once",
        ),
    ],
)
async def test_require_key_refusals(
    headers: list[tuple[str, str]], status: int, reason: str
) -> None:
    error = await refused(RequireKey("x-api-key", SECRET), make_ctx(headers))
    assert (error.status, error.reason) == (status, reason)


def test_require_key_keeps_no_plaintext_and_validates() -> None:
    mw = RequireKey("x-api-key", SECRET)
    assert repr(mw) == "RequireKey('x-api-key', key=<hidden>)"
    assert SECRET not in repr(vars(mw))
    for bad in ("", " padded", "line\nbreak"):
        with pytest.raises(UsageError):
            RequireKey("x-api-key", bad)
    with pytest.raises(UsageError):
        RequireKey("not a header", SECRET)


# --- BasicAuth ----------------------------------------------------------------------------


def basic(user: str, password: str) -> tuple[str, str]:
    return ("authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())


def check_password(user: str, password: str) -> bool:
    expected = {"alice": SECRET, "bob": "bobs-pass", "éva": "pässwörd:with:colons"}.get(user)
    return expected is not None and secrets_equal(password, expected)


async def only_alice(user: str, ctx: SessionContext) -> bool:
    await asyncio.sleep(0)
    return user == "alice"


async def test_basic_admits_and_sets_remote_user() -> None:
    mw = BasicAuth("chat", check_password, only_alice)
    ctx = await admitted(mw, make_ctx([basic("alice", SECRET)]))
    assert (ctx.identity, ctx.get(REMOTE_USER), ctx.get(AUTH_SCHEME)) == ("alice", "alice", "basic")
    ctx = await admitted(
        BasicAuth("chat", check_password), make_ctx([basic("éva", "pässwörd:with:colons")])
    )
    assert ctx.identity == "éva"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([], "missing basic credentials"),
        ([("authorization", f"Bearer {SECRET}")], "authorization scheme is not Basic"),
        ([("authorization", "Basic !!!not-base64")], "malformed basic credentials"),
        ([("authorization", "Basic YWxpY2U")], "malformed basic credentials"),  # bad padding
        (
            [("authorization", "Basic " + base64.b64encode(b"alice").decode())],
            "malformed basic credentials",
        ),
        (
            [("authorization", "Basic " + base64.b64encode(b"\xff:\xfe").decode())],
            "malformed basic credentials",
        ),
        ([basic("alice", "wrong")], "invalid credentials"),
        ([basic("mallory", SECRET)], "invalid credentials"),
        ([basic("alice", SECRET), basic("alice", SECRET)], "malformed authorization header"),
    ],
)
async def test_basic_refusals_are_401_naming_the_realm(
    headers: list[tuple[str, str]], reason: str
) -> None:
    error = await refused(BasicAuth("chat", check_password, only_alice), make_ctx(headers))
    assert (error.status, error.reason) == (401, reason)
    assert challenge(error) == 'Basic realm="chat", charset="UTF-8"'


async def test_basic_authorizator_refusal_is_403() -> None:
    error = await refused(
        BasicAuth("chat", check_password, only_alice), make_ctx([basic("bob", "bobs-pass")])
    )
    assert (error.status, error.reason) == (403, "not authorized")
    assert challenge(error) is None


def test_basic_options_and_repr() -> None:
    mw = BasicAuth("chat", check_password, only_alice)
    assert repr(mw) == "BasicAuth('chat', check_password, authorizator=only_alice)"
    for realm in ("", 'a"b', "back\\slash", "line\nbreak"):
        with pytest.raises(UsageError):
            BasicAuth(realm, check_password)
    with pytest.raises(UsageError):
        BasicAuth("chat", check_password, authorizator=cast_any("nope"))


def cast_any(value: object) -> Any:
    return value
