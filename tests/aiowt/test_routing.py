"""The route table: patterns, precedence, decoding, groups."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote, unquote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from aiowt.actors import Handler as BaseHandler
from aiowt.middleware.chain import CallNext, Middleware, build_chain
from aiowt.routing import Route, RouteGroup, RouteMatch, Router
from aiowt.transport.context import SessionContext
from aiowt.transport.errors import UsageError
from aiowt.transport.request import ConnectRequest


class Handler(BaseHandler):
    """A handler actor class that never runs: routing only looks at the class."""


async def mw_a(ctx: SessionContext, call_next: CallNext) -> None:
    await call_next(ctx)


async def mw_b(ctx: SessionContext, call_next: CallNext) -> None:
    await call_next(ctx)


async def mw_c(ctx: SessionContext, call_next: CallNext) -> None:
    await call_next(ctx)


def matched(router: Router, path: str) -> tuple[str, dict[str, str]] | None:
    result = router.match(path)
    if result is None:
        return None
    return result.route.pattern, dict(result.params)


def router_with(*patterns: str) -> Router:
    router = Router()
    for pattern in patterns:
        router.add(pattern, Handler)
    return router


# --- basics -----------------------------------------------------------------------------


def test_literal_param_and_rest_patterns() -> None:
    router = router_with("/", "/echo", "/chat/{room}", "/files/{path...}", "/a/{x}/b/{y}")

    assert matched(router, "/") == ("/", {})
    assert matched(router, "/echo") == ("/echo", {})
    assert matched(router, "/chat/lobby") == ("/chat/{room}", {"room": "lobby"})
    assert matched(router, "/files/a/b/c.txt") == ("/files/{path...}", {"path": "a/b/c.txt"})
    assert matched(router, "/a/1/b/2") == ("/a/{x}/b/{y}", {"x": "1", "y": "2"})
    assert matched(router, "/nothing") is None
    assert matched(router, "/chat") is None
    assert matched(router, "/chat/lobby/extra") is None


def test_add_returns_the_route_and_match_returns_it() -> None:
    router = Router()
    route = router.add("/chat/{room}", Handler, [mw_a])
    assert route == Route("/chat/{room}", Handler, (mw_a,))
    result = router.match("/chat/x")
    assert isinstance(result, RouteMatch)
    assert result.route is route
    with pytest.raises(TypeError):
        result.params["room"] = "y"  # type: ignore[index]


def test_param_needs_a_non_empty_segment() -> None:
    router = router_with("/chat/{room}")
    assert matched(router, "/chat/") is None


def test_rest_matches_zero_or_more_segments() -> None:
    router = router_with("/files/{path...}")
    assert matched(router, "/files") == ("/files/{path...}", {"path": ""})
    assert matched(router, "/files/") == ("/files/{path...}", {"path": ""})
    assert matched(router, "/files/a") == ("/files/{path...}", {"path": "a"})
    assert matched(router, "/files/a/") == ("/files/{path...}", {"path": "a/"})
    assert matched(router, "/filesx") is None


def test_root_rest_matches_everything() -> None:
    router = router_with("/{all...}")
    assert matched(router, "/") == ("/{all...}", {"all": ""})
    assert matched(router, "/x/y") == ("/{all...}", {"all": "x/y"})


def test_trailing_slash_is_significant() -> None:
    router = router_with("/a", "/b/")
    assert matched(router, "/a") == ("/a", {})
    assert matched(router, "/a/") is None
    assert matched(router, "/b/") == ("/b/", {})
    assert matched(router, "/b") is None


def test_query_is_ignored() -> None:
    router = router_with("/chat/{room}")
    assert matched(router, "/chat/x?token=abc/def") == ("/chat/{room}", {"room": "x"})


# --- precedence -------------------------------------------------------------------------


PRECEDENCE_PATTERNS = ("/users/me", "/users/{id}", "/users/{path...}", "/users")


@pytest.mark.parametrize("order", [PRECEDENCE_PATTERNS, tuple(reversed(PRECEDENCE_PATTERNS))])
def test_literal_beats_param_beats_rest_in_any_order(order: Sequence[str]) -> None:
    router = router_with(*order)
    assert matched(router, "/users/me") == ("/users/me", {})
    assert matched(router, "/users/42") == ("/users/{id}", {"id": "42"})
    assert matched(router, "/users/42/posts") == ("/users/{path...}", {"path": "42/posts"})
    assert matched(router, "/users") == ("/users", {})
    assert matched(router, "/users/") == ("/users/{path...}", {"path": ""})


def test_a_failed_literal_branch_falls_back_to_the_param() -> None:
    router = router_with("/a/b/c", "/a/{x}/d", "/a/{rest...}")
    assert matched(router, "/a/b/c") == ("/a/b/c", {})
    assert matched(router, "/a/b/d") == ("/a/{x}/d", {"x": "b"})
    assert matched(router, "/a/b/e") == ("/a/{rest...}", {"rest": "b/e"})


def test_routes_may_name_the_same_position_differently() -> None:
    router = router_with("/u/{id}", "/u/{uid}/posts")
    assert matched(router, "/u/7") == ("/u/{id}", {"id": "7"})
    assert matched(router, "/u/7/posts") == ("/u/{uid}/posts", {"uid": "7"})


# --- decoding and odd paths ---------------------------------------------------------------


def test_segments_are_percent_decoded_one_by_one() -> None:
    router = router_with("/users/{name}", "/hello world", "/files/{path...}")
    assert matched(router, "/users/j%C3%B6rg") == ("/users/{name}", {"name": "jörg"})
    assert matched(router, "/users/a%2Fb") == ("/users/{name}", {"name": "a/b"})
    assert matched(router, "/hello%20world") == ("/hello world", {})
    assert matched(router, "/files/a%20b/c") == ("/files/{path...}", {"path": "a b/c"})
    # Invalid escapes and invalid UTF-8 never raise.
    assert matched(router, "/users/%zz") == ("/users/{name}", {"name": "%zz"})
    assert matched(router, "/users/%ff") == ("/users/{name}", {"name": "\ufffd"})


@pytest.mark.parametrize(
    "path",
    [
        "/files/../etc/passwd",
        "/files/./a",
        "/files/a/..",
        "/files/%2e%2e/etc",
        "/files/%2E%2E",
        "/files/a%2F..%2Fb",
        "/files//a",
        "//files/a",
        "/users/..",
        "/users/a%2F..",
    ],
)
def test_dot_segments_and_empty_segments_match_nothing(path: str) -> None:
    router = router_with("/files/{path...}", "/users/{name}", "/{all...}")
    assert router.match(path) is None


@pytest.mark.parametrize("path", ["", "files", "?/a", "%2Ffiles", " /a", "\x00", "/\ud800"])
def test_malformed_paths_match_nothing_or_safely(path: str) -> None:
    router = router_with("/files", "/{all...}")
    result = router.match(path)
    assert result is None or result.route.pattern == "/{all...}"


def test_a_path_with_very_many_segments_does_not_exhaust_the_stack() -> None:
    # Lookup depth follows the patterns, never the peer's path.
    router = router_with("/a/a/{x}", "/a/{x}/{rest...}", "/{x}")
    path = "/a" * 100_000
    assert matched(router, path) == (
        "/a/{x}/{rest...}",
        {"x": "a", "rest": "/".join(["a"] * 99_998)},
    )
    assert router_with("/a/{x}").match(path) is None


# --- bad patterns -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "must start with '/'"),
        ("chat", "must start with '/'"),
        ("/chat/{rest...}/more", "must be the last segment"),
        ("/chat/{}", "not a valid parameter name"),
        ("/chat/{...}", "not a valid parameter name"),
        ("/chat/{1room}", "not a valid parameter name"),
        ("/chat/{room-id}", "not a valid parameter name"),
        ("/chat/{a}/{a}", "appears twice"),
        ("/chat/{a}/{a...}", "appears twice"),
        ("/chat/room-{id}", "whole segment"),
        ("/chat/{id", "whole segment"),
        ("/chat/id}", "whole segment"),
        ("/chat//room", "empty segment"),
        ("/chat/../room", "never match"),
        ("/chat/./room", "never match"),
        ("/chat?x=1", "path only"),
        ("/chat#frag", "path only"),
        ("/caf%C3%A9", "decoded"),
    ],
)
def test_bad_patterns_are_rejected_at_add(pattern: str, message: str) -> None:
    router = Router()
    with pytest.raises(UsageError, match=message):
        router.add(pattern, Handler)
    assert len(router) == 0


@pytest.mark.parametrize(
    ("first", "second"),
    [("/a", "/a"), ("/a/{x}", "/a/{y}"), ("/a/{x...}", "/a/{y...}"), ("/", "/")],
)
def test_duplicate_patterns_are_rejected(first: str, second: str) -> None:
    router = router_with(first)
    with pytest.raises(UsageError, match="duplicates"):
        router.add(second, Handler)
    assert len(router) == 1


def test_different_shapes_are_not_duplicates() -> None:
    router = router_with("/a", "/a/", "/a/{x}", "/a/{x...}", "/{x}", "/{x}/")
    assert len(router) == 6


def test_non_callable_middleware_is_rejected() -> None:
    with pytest.raises(UsageError, match="callable"):
        Router().add("/a", Handler, ["nope"])  # type: ignore[list-item]


def test_a_frozen_router_refuses_routes() -> None:
    router = router_with("/a")
    router.freeze()
    router.freeze()
    assert router.frozen
    with pytest.raises(UsageError, match="frozen"):
        router.add("/b", Handler)
    group = RouteGroup(router, "/g")
    with pytest.raises(UsageError, match="frozen"):
        group.route("/c", Handler)
    assert matched(router, "/a") == ("/a", {})


def test_routes_len_iter_repr() -> None:
    router = router_with("/b", "/a/{x}")
    assert [route.pattern for route in router.routes()] == ["/b", "/a/{x}"]
    assert [route.pattern for route in router] == ["/b", "/a/{x}"]
    assert len(router) == 2
    assert repr(router) == "Router([/b, /a/{x}])"


# --- groups -------------------------------------------------------------------------------


def test_nested_groups_join_prefixes_and_order_middleware() -> None:
    router = Router()
    api = RouteGroup(router, "/api", (mw_a,))
    v1 = api.group("/v1", mw_b)
    v1.route("/rooms/{room}", Handler, mw_c).route("", Handler)
    api.route("/health", Handler)

    assert [route.pattern for route in router.routes()] == [
        "/api/v1/rooms/{room}",
        "/api/v1",
        "/api/health",
    ]
    rooms, v1_root, health = router.routes()
    assert rooms.middleware == (mw_a, mw_b, mw_c)
    assert v1_root.middleware == (mw_a, mw_b)
    assert health.middleware == (mw_a,)
    assert v1.prefix == "/api/v1"
    assert v1.middleware == (mw_a, mw_b)
    assert repr(v1) == "RouteGroup('/api/v1', middleware=[mw_a, mw_b])"
    assert matched(router, "/api/v1/rooms/x") == ("/api/v1/rooms/{room}", {"room": "x"})


async def test_group_middleware_run_between_global_and_route_middleware() -> None:
    trace: list[str] = []

    def recorder(name: str) -> Middleware:
        class Recorder:
            async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
                trace.append(name)
                await call_next(ctx)
                trace.append(f"{name}-after")

        return Recorder()

    async def terminal(ctx: SessionContext) -> None:
        trace.append("handler")

    router = Router()
    outer = RouteGroup(router, "/g", (recorder("group"),))
    outer.group("/h", recorder("inner")).route("/r", Handler, recorder("route"))
    result = router.match("/g/h/r")
    assert result is not None
    chain = build_chain((recorder("global"), *result.route.middleware), terminal)
    request = ConnectRequest(
        "CONNECT", "https", "localhost", "/g/h/r", "", "webtransport", (), ("::1", 1)
    )
    await chain(SessionContext(request=request))
    assert trace == [
        "global",
        "group",
        "inner",
        "route",
        "handler",
        "route-after",
        "inner-after",
        "group-after",
        "global-after",
    ]


def test_group_prefixes_are_normalised_and_checked() -> None:
    router = Router()
    RouteGroup(router, "/api/").route("/x", Handler).route("/", Handler)
    RouteGroup(router, "/").route("/root", Handler)
    RouteGroup(router, "/rooms/{room}").route("/members", Handler)
    assert [route.pattern for route in router.routes()] == [
        "/api/x",
        "/api/",
        "/root",
        "/rooms/{room}/members",
    ]
    with pytest.raises(UsageError, match="start with '/'"):
        RouteGroup(router, "api")
    with pytest.raises(UsageError, match="rest"):
        RouteGroup(router, "/files/{path...}")
    with pytest.raises(UsageError, match="empty segment"):
        RouteGroup(router, "//")
    with pytest.raises(UsageError, match="start with '/'"):
        RouteGroup(router, "/api").route("x", Handler)
    with pytest.raises(UsageError, match="start with '/'"):
        RouteGroup(router, "/api").group("v2")
    with pytest.raises(UsageError, match="cannot be ''"):
        RouteGroup(router, "/").route("", Handler)
    with pytest.raises(UsageError, match="appears twice"):
        RouteGroup(router, "/rooms/{room}").route("/{room}", Handler)
    with pytest.raises(UsageError, match="callable"):
        RouteGroup(router, "/x", ("nope",))  # type: ignore[arg-type]


def test_a_group_can_add_through_any_sink() -> None:
    added: list[tuple[str, object, tuple[object, ...]]] = []

    class Sink:
        def add(self, pattern: str, handler: object, middleware: Sequence[object] = ()) -> None:
            added.append((pattern, handler, tuple(middleware)))

    RouteGroup(Sink(), "/x", (mw_a,)).route("/y", Handler, mw_b)
    assert added == [("/x/y", Handler, (mw_a, mw_b))]


# --- properties ---------------------------------------------------------------------------

LITERALS = st.sampled_from(["a", "b", "chat", "room", "hello world", "é", "%"])
VALUES = st.text(
    alphabet=st.characters(exclude_categories=["Cs"]),
    min_size=1,
    max_size=12,
).filter(lambda value: not any(part in (".", "..") for part in value.split("/")))


@st.composite
def pattern_and_path(draw: st.DrawFn) -> tuple[str, str, dict[str, str]]:
    """A valid pattern, a path built from it, and the params that path should give."""
    kinds = draw(st.lists(st.sampled_from(["literal", "param"]), max_size=6))
    rest = draw(st.booleans())
    pattern_parts: list[str] = []
    path_parts: list[str] = []
    params: dict[str, str] = {}
    for index, kind in enumerate(kinds):
        if kind == "literal":
            literal = draw(LITERALS)
            pattern_parts.append(literal)
            path_parts.append(quote(literal, safe=""))
        else:
            name = f"p{index}"
            value = draw(VALUES)
            pattern_parts.append("{" + name + "}")
            path_parts.append(quote(value, safe=""))
            params[name] = value
    if rest:
        pattern_parts.append("{rest...}")
        values = draw(st.lists(VALUES, max_size=4))
        path_parts.extend(quote(value, safe="") for value in values)
        params["rest"] = "/".join(values)
    # With no rest segments, "/a/{rest...}" gets the path "/a" (and "/{rest...}" gets "/").
    return "/" + "/".join(pattern_parts), "/" + "/".join(path_parts), params


@given(pattern_and_path())
def test_a_path_built_from_a_pattern_matches_it_with_its_params(
    case: tuple[str, str, dict[str, str]],
) -> None:
    pattern, path, params = case
    router = router_with(pattern)
    assert matched(router, path) == (pattern, params)


def naive_match(pattern: str, path: str) -> tuple[list[int], dict[str, str]] | None:
    """An independent matcher: the rank list (literal 0, param 1, rest 2) and params."""
    segments = [unquote(raw) for raw in path[1:].split("/")]
    parts = pattern[1:].split("/")
    ranks: list[int] = []
    params: dict[str, str] = {}
    for index, part in enumerate(parts):
        if part.endswith("...}"):
            ranks.append(2)
            params[part[1:-4]] = "/".join(segments[index:])
            return ranks, params
        if index >= len(segments):
            return None
        if part.startswith("{"):
            if not segments[index]:
                return None
            ranks.append(1)
            params[part[1:-1]] = segments[index]
        else:
            if segments[index] != part:
                return None
            ranks.append(0)
    if len(parts) != len(segments):
        return None
    return ranks, params


SMALL_PATTERN = st.lists(st.sampled_from(["a", "b", "{x}", "{y}"]), min_size=0, max_size=3).flatmap(
    lambda parts: st.sampled_from(
        ["/" + "/".join(parts), "/" + "/".join([*parts, "{r...}"]), "/" + "/".join(parts) + "/"]
    )
)


@given(
    patterns=st.lists(SMALL_PATTERN, min_size=1, max_size=8),
    segments=st.lists(st.sampled_from(["a", "b", "c", ""]), min_size=0, max_size=4),
)
def test_the_most_specific_route_wins(patterns: list[str], segments: list[str]) -> None:
    # The trie's answer equals a brute-force search for the matching route with the
    # smallest rank list (literal < param < rest, segment by segment, shorter first).
    router = Router()
    for pattern in patterns:
        try:
            router.add(pattern, Handler)
        except UsageError:
            continue  # a duplicate shape, or "{x}" twice in one pattern
    assume(len(router) > 0)
    assume(all(segment for segment in segments[:-1]))
    path = "/" + "/".join(segments)
    candidates = []
    for route in router.routes():
        found = naive_match(route.pattern, path)
        if found is not None:
            candidates.append((found[0], route.pattern, found[1]))
    expected = min(candidates)[1:] if candidates else None
    assert matched(router, path) == expected


@given(st.text())
def test_match_never_raises_and_never_yields_dot_segments(path: str) -> None:
    router = router_with("/a/{x}", "/{x}/{y...}", "/{all...}", "/")
    result = router.match(path)
    if result is not None:
        for value in result.params.values():
            assert not any(part in (".", "..") for part in value.split("/"))
