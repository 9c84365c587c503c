"""Routes: which handler, with which route middleware, serves a CONNECT path.

Patterns are paths made of segments:

- a literal segment (``chat``) matches that exact segment after percent-decoding, so
  literals are written decoded (``/café``; an escaped literal is refused);
- ``{name}`` matches exactly one non-empty segment and binds it to ``name``;
- ``{name...}`` matches the rest of the path, zero or more segments, and must be the
  last segment. Its value is the decoded segments joined by ``/`` (``""`` for none).

Matching looks at the path only, never the query. The table is a trie keyed by
segment. At each segment a literal child is tried first, then a ``{param}`` child,
then a ``{rest...}``; if the preferred branch fails further down, the next one is
tried (backtracking). Where the path ends, a route ending there beats a
``{rest...}`` matching zero segments. So ``/users/me`` beats ``/users/{id}``, which
beats ``/users/{path...}``; the first segment where two candidates differ decides,
and the winner never depends on the order routes were added (go-json-rest's trie
instead picks among full matches by definition order). Each trie node is visited at
most once per lookup, so backtracking stays linear in the size of the table.

Paths are handled like this, and never raise:

- each segment is percent-decoded on its own (`urllib.parse.unquote`, invalid UTF-8
  replaced) after splitting on ``/``, so ``%2F`` stays inside a parameter's value
  instead of making a new segment;
- ``/a`` and ``/a/`` are different paths: a trailing slash is an empty last segment,
  matched only by a pattern that ends in ``/`` or by a ``{rest...}`` (whose value then
  keeps it: ``/files/x/`` gives ``"x/"``, ``/files/`` and ``/files`` both give ``""``);
- a ``{rest...}`` value joins decoded segments with ``/``, so an encoded ``%2F`` in it
  cannot be told from a separator; a ``{name}`` value keeps it unambiguously;
- a path with an empty segment in the middle (``//``) or with a ``.`` or ``..``
  segment (also when percent-encoded, or hidden in a decoded segment as ``a%2F..``)
  matches nothing. Browsers resolve dot segments before sending, so a raw one comes
  from a hand-made request whose meaning is unclear; refusing it, rather than
  resolving it, means no parameter value ever carries a ``..`` that a handler could
  join onto a file path.

Duplicate patterns (same shape, whatever the parameter names), malformed patterns and
invalid parameter names raise `UsageError` when the route is added.
"""

from __future__ import annotations

import enum
import re
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import unquote

from aiowt.actors import Handler
from aiowt.middleware import Middleware
from aiowt.transport.errors import UsageError

__all__ = ["Route", "RouteGroup", "RouteMatch", "RouteSink", "Router"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DOT_SEGMENTS = frozenset({".", ".."})


@dataclass(frozen=True, slots=True)
class Route:
    """One entry of the route table: a pattern, its handler and its own middleware.

    `middleware` run after the server's global middleware, outermost first (a group's
    middleware come before the route's own).
    """

    pattern: str
    handler: type[Handler]
    middleware: tuple[Middleware, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """The route a path matched and the decoded values of its parameters."""

    route: Route
    params: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))


class Router:
    """A route table with trie matching; see the module docstring for the rules.

    Add routes while configuring, then `freeze()` it (the server does when it starts);
    `add` on a frozen router raises `UsageError`, so a route can never appear after the
    chains were built. Matching is read-only and safe to call from any task.
    """

    def __init__(self) -> None:
        self._root = _Node()
        self._routes: list[Route] = []
        self._shapes: dict[tuple[tuple[str, str], ...], Route] = {}
        self._frozen = False

    def add(
        self,
        pattern: str,
        handler: type[Handler],
        middleware: Sequence[Middleware] = (),
    ) -> Route:
        """Add a route for `pattern`, returning it; raises `UsageError` if it is invalid.

        Invalid means: the handler is not a `Handler` subclass, the router is frozen, the
        pattern does not start with ``/``, has an empty or ``.``/``..`` segment before its
        end, a ``{``/``}`` that is not a whole ``{name}``/``{name...}`` segment, a name
        that is not an identifier, a name used twice, a ``{rest...}`` that is not last, or
        a ``?``/``#``; or another route already has the same shape (``/a/{x}`` and
        ``/a/{y}`` collide).
        """
        if self._frozen:
            raise UsageError(f"the router is frozen; cannot add {pattern!r}")
        segments = _parse(pattern)
        shape = tuple(segment.shape for segment in segments)
        existing = self._shapes.get(shape)
        if existing is not None:
            raise UsageError(f"route {pattern!r} duplicates {existing.pattern!r}")
        if not (isinstance(handler, type) and issubclass(handler, Handler)):
            raise UsageError(
                f"route {pattern!r}: the handler must be a Handler subclass"
                f" (class Echo(Handler): ...), got {handler!r}"
            )
        middleware = tuple(middleware)
        for mw in middleware:
            if not callable(mw):
                raise UsageError(f"route {pattern!r}: middleware must be callable, got {mw!r}")
        route = Route(pattern, handler, middleware)
        node = self._root
        for segment in segments:
            if segment.kind is _LITERAL:
                node = node.literals.setdefault(segment.text, _Node())
            elif segment.kind is _PARAM:
                if node.param is None:
                    node.param = _Node()
                node = node.param
            else:
                node.rest = _Leaf(route, _names(segments))
                break
        else:
            node.leaf = _Leaf(route, _names(segments))
        self._shapes[shape] = route
        self._routes.append(route)
        return route

    def match(self, path: str) -> RouteMatch | None:
        """The route for `path` and its parameters, or None if no route matches.

        Anything after a ``?`` is ignored. Never raises for any string.
        """
        segments = _split_path(path)
        if segments is None:
            return None
        values: list[str] = []
        leaf = _search(self._root, segments, 0, values)
        if leaf is None:
            return None
        return RouteMatch(
            leaf.route, types.MappingProxyType(dict(zip(leaf.names, values, strict=True)))
        )

    def freeze(self) -> None:
        """Refuse further `add` calls; idempotent."""
        self._frozen = True

    @property
    def frozen(self) -> bool:
        """True once `freeze()` was called."""
        return self._frozen

    def routes(self) -> tuple[Route, ...]:
        """Every route, in the order added."""
        return tuple(self._routes)

    def __len__(self) -> int:
        return len(self._routes)

    def __iter__(self) -> Iterator[Route]:
        return iter(tuple(self._routes))

    def __repr__(self) -> str:
        patterns = ", ".join(route.pattern for route in self._routes)
        return f"Router([{patterns}])"


class RouteSink(Protocol):
    """Where a `RouteGroup` adds its routes: a `Router`, or anything with its `add`."""

    def add(
        self, pattern: str, handler: type[Handler], middleware: Sequence[Middleware] = ()
    ) -> object: ...


class RouteGroup:
    """Routes under a common prefix that share middleware.

    ``group.route(pattern, handler, *mw)`` adds ``prefix + pattern`` to the router with
    the group's middleware before the route's own; ``group.group(sub, *mw)`` nests, so
    ``g = RouteGroup(router, "/api", A); g.group("/v1", B).route("/x", h, C)`` adds
    ``/api/v1/x`` with middleware ``(A, B, C)``. In a group, the pattern ``""`` means
    the prefix itself (``/api``), while ``"/"`` means the prefix with a trailing slash.
    A trailing slash on the prefix is dropped; a prefix may hold ``{params}`` but not a
    ``{rest...}``.
    """

    __slots__ = ("_middleware", "_prefix", "_sink")

    def __init__(self, sink: RouteSink, prefix: str, middleware: Sequence[Middleware] = ()) -> None:
        self._sink = sink
        self._prefix = _check_prefix(prefix)
        self._middleware = tuple(middleware)
        for mw in self._middleware:
            if not callable(mw):
                raise UsageError(f"group {prefix!r}: middleware must be callable, got {mw!r}")

    @property
    def prefix(self) -> str:
        """The joined prefix, without a trailing slash (``""`` for the root)."""
        return self._prefix

    @property
    def middleware(self) -> tuple[Middleware, ...]:
        """Middleware every route of this group gets, outermost first."""
        return self._middleware

    def route(self, pattern: str, handler: type[Handler], *middleware: Middleware) -> RouteGroup:
        """Add ``prefix + pattern`` with the group's middleware, then `middleware`."""
        if pattern and not pattern.startswith("/"):
            raise UsageError(f"a route pattern in a group must start with '/', got {pattern!r}")
        full = self._prefix + pattern
        if not full:
            raise UsageError("the root group has no prefix, so its pattern cannot be ''")
        self._sink.add(full, handler, (*self._middleware, *middleware))
        return self

    def group(self, prefix: str, *middleware: Middleware) -> RouteGroup:
        """A nested group under ``self.prefix + prefix``, its middleware after ours."""
        if not prefix.startswith("/"):
            raise UsageError(f"a group prefix must start with '/', got {prefix!r}")
        return RouteGroup(self._sink, self._prefix + prefix, (*self._middleware, *middleware))

    def __repr__(self) -> str:
        names = ", ".join(
            getattr(mw, "__qualname__", None) or type(mw).__name__ for mw in self._middleware
        )
        return f"RouteGroup({self._prefix or '/'!r}, middleware=[{names}])"


# --- patterns -------------------------------------------------------------------------


class _Kind(enum.Enum):
    LITERAL = "literal"
    PARAM = "param"
    REST = "rest"


_LITERAL = _Kind.LITERAL
_PARAM = _Kind.PARAM
_REST = _Kind.REST


@dataclass(frozen=True, slots=True)
class _Segment:
    kind: _Kind
    text: str
    """The literal text, or the parameter's name."""

    @property
    def shape(self) -> tuple[str, str]:
        # Parameter names do not make routes different, only kinds and positions.
        return (self.kind.value, self.text if self.kind is _LITERAL else "")


def _parse(pattern: str) -> list[_Segment]:
    if not isinstance(pattern, str) or not pattern.startswith("/"):
        raise UsageError(f"a route pattern must start with '/', got {pattern!r}")
    if "?" in pattern or "#" in pattern:
        raise UsageError(f"route {pattern!r}: patterns match the path only, no '?' or '#'")
    raw = pattern[1:].split("/")
    segments: list[_Segment] = []
    seen: set[str] = set()
    for index, text in enumerate(raw):
        last = index == len(raw) - 1
        if text.startswith("{") and text.endswith("}") and len(text) >= 2:
            name = text[1:-1]
            kind = _PARAM
            if name.endswith("..."):
                name = name[:-3]
                kind = _REST
                if not last:
                    raise UsageError(f"route {pattern!r}: {text} must be the last segment")
            if not _NAME.match(name):
                raise UsageError(f"route {pattern!r}: {text!r} is not a valid parameter name")
            if name in seen:
                raise UsageError(f"route {pattern!r}: parameter {name!r} appears twice")
            seen.add(name)
            segments.append(_Segment(kind, name))
            continue
        if "{" in text or "}" in text:
            raise UsageError(
                f"route {pattern!r}: a parameter must be a whole segment, like /{{name}}"
            )
        if text in _DOT_SEGMENTS:
            raise UsageError(f"route {pattern!r}: '.' and '..' segments never match")
        if not text and not last:
            raise UsageError(f"route {pattern!r}: empty segment ('//')")
        if unquote(text) != text:
            # Literals are compared with the decoded path segment, so an escaped
            # literal could never match.
            raise UsageError(
                f"route {pattern!r}: write literal segments decoded ({unquote(text)!r},"
                f" not {text!r})"
            )
        segments.append(_Segment(_LITERAL, text))
    return segments


def _names(segments: list[_Segment]) -> tuple[str, ...]:
    return tuple(segment.text for segment in segments if segment.kind is not _LITERAL)


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str):
        raise UsageError(f"a group prefix must be a string, got {prefix!r}")
    if prefix in ("", "/"):
        return ""
    if not prefix.startswith("/"):
        raise UsageError(f"a group prefix must start with '/', got {prefix!r}")
    trimmed = prefix.removesuffix("/")
    segments = _parse(trimmed)
    if segments[-1].kind is _LITERAL and not segments[-1].text:
        raise UsageError(f"group prefix {prefix!r} has an empty segment")
    if segments[-1].kind is _REST:
        raise UsageError(f"group prefix {prefix!r} cannot end in a {{rest...}} parameter")
    return trimmed


# --- matching -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Leaf:
    route: Route
    names: tuple[str, ...]
    """Parameter names in path order; the values are collected in the same order."""


class _Node:
    __slots__ = ("leaf", "literals", "param", "rest")

    def __init__(self) -> None:
        self.literals: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.rest: _Leaf | None = None
        self.leaf: _Leaf | None = None


def _split_path(path: str) -> list[str] | None:
    """Decoded segments of `path`, or None for a path that must match nothing."""
    path = path.partition("?")[0]
    if not path.startswith("/"):
        return None
    segments = [unquote(raw) for raw in path[1:].split("/")]
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if not segment:
            if index != last:
                return None
            continue
        if segment in _DOT_SEGMENTS or (
            "/" in segment and any(part in _DOT_SEGMENTS for part in segment.split("/"))
        ):
            return None
    return segments


def _search(node: _Node, segments: list[str], index: int, values: list[str]) -> _Leaf | None:
    # Recursion only descends through literal and param children, so its depth is
    # bounded by the longest pattern, not by the (peer-controlled) path length.
    if index == len(segments):
        if node.leaf is not None:
            return node.leaf
        if node.rest is not None:
            values.append("")
            return node.rest
        return None
    segment = segments[index]
    child = node.literals.get(segment)
    if child is not None:
        found = _search(child, segments, index + 1, values)
        if found is not None:
            return found
    if node.param is not None and segment:
        values.append(segment)
        found = _search(node.param, segments, index + 1, values)
        if found is not None:
            return found
        values.pop()
    if node.rest is not None:
        values.append("/".join(segments[index:]))
        return node.rest
    return None
