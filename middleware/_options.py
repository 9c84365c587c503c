"""Checks for middleware options, shared by the catalogue: each raises `UsageError`.

Middleware validate their configuration once, in ``__init__``, so a mistake surfaces
when the server is configured rather than at the first session.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Awaitable
from typing import TypeVar, cast

from aiowt.transport import UsageError

__all__ = [
    "callable_name",
    "check_callable",
    "check_int",
    "check_regex",
    "check_seconds",
    "header_name",
    "header_value",
    "maybe_await",
    "retry_after",
]

T = TypeVar("T")

# RFC 9110 field-name token, lower-case as HTTP/3 requires on the wire.
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")


def header_name(name: object, what: str = "header name") -> str:
    """`name` lower-cased, or `UsageError` if it cannot be an HTTP/3 header name."""
    if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name.lower()):
        raise UsageError(f"{what} must be an HTTP header name (a token), got {name!r}")
    return name.lower()


def header_value(value: object, what: str) -> str:
    """`value`, or `UsageError` if sending it would break the response.

    HTTP/3 peers (aioquic included) tear down the whole connection on a header value
    with control characters or surrounding whitespace, so configuration that would
    produce one is refused up front rather than on the first session.
    """
    if (
        not isinstance(value, str)
        or not value
        or value != value.strip(" \t")
        or not value.isprintable()
    ):
        raise UsageError(
            f"{what} must be a non-empty printable header value without surrounding"
            f" whitespace, got {value!r}"
        )
    return value


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """`value` if it is an int (not a bool) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        if minimum == 1:
            raise UsageError(f"{name} must be a positive int, got {value!r}")
        raise UsageError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    """`value` as float seconds if it is finite and positive (or zero, when allowed)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def check_callable(value: object, what: str) -> None:
    """`UsageError` unless `value` is a callable instance (a class is the usual slip)."""
    if isinstance(value, type) or not callable(value):
        raise UsageError(f"{what} must be a callable (or an instance), got {value!r}")


def check_regex(pattern: str | re.Pattern[str] | None, what: str) -> re.Pattern[str] | None:
    """`pattern` compiled (None stays None); `UsageError` if it does not compile."""
    if pattern is None or isinstance(pattern, re.Pattern):
        return pattern
    if not isinstance(pattern, str):
        raise UsageError(f"{what} must be a regular expression string, got {pattern!r}")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"{what} {pattern!r} is not a valid regular expression: {exc}") from None


def callable_name(fn: object) -> str:
    """A callable's qualified name for a ``repr``, or its own ``repr``."""
    return getattr(fn, "__qualname__", None) or repr(fn)


async def maybe_await(value: T | Awaitable[T]) -> T:
    """Await `value` if a sync-or-async callback returned an awaitable."""
    if inspect.isawaitable(value):
        return await cast(Awaitable[T], value)
    return value


def retry_after(seconds: float) -> tuple[str, str]:
    """The ``retry-after`` header for a refusal: whole seconds, never 0 (a retry storm)."""
    return ("retry-after", str(max(1, math.ceil(seconds))))
