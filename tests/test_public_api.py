"""The public surface: what each package exports, no name for two things, no two names for
one thing, docstrings on every export, and the old names that still work, warning."""

from __future__ import annotations

import importlib
import inspect
import types
from typing import Any

import pytest

import aiowt
import aiowt.actors
import aiowt.middleware
import aiowt.transport

PACKAGES = [aiowt, aiowt.actors, aiowt.middleware, aiowt.transport]


def _exports() -> list[tuple[str, str, Any]]:
    return [(p.__name__, name, getattr(p, name)) for p in PACKAGES for name in p.__all__]


def test_the_common_case_is_one_import() -> None:
    from aiowt import Handler, Server, connect

    assert Server.__module__ == "aiowt.server"
    assert Handler is aiowt.actors.Handler
    assert connect is aiowt.transport.connect


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_every_export_exists_and_is_documented(package: types.ModuleType) -> None:
    assert package.__doc__
    assert len(set(package.__all__)) == len(package.__all__)
    for name in package.__all__:
        value = getattr(package, name)
        if inspect.isclass(value) or inspect.isfunction(value) or inspect.ismodule(value):
            assert inspect.getdoc(value), f"{package.__name__}.{name} has no docstring"


def test_no_name_means_two_things_and_no_thing_has_two_names() -> None:
    by_name: dict[str, set[int]] = {}
    by_object: dict[int, set[str]] = {}
    for _, name, value in _exports():
        if isinstance(value, str | int | float | tuple | frozenset):
            continue
        by_name.setdefault(name, set()).add(id(value))
        by_object.setdefault(id(value), set()).add(name)
    assert {name for name, ids in by_name.items() if len(ids) > 1} == set()
    assert [names for names in by_object.values() if len(names) > 1] == []


def test_the_surfaces_are_small() -> None:
    """Messages and constants are reached through their modules, not the package."""
    assert len(aiowt.__all__) <= 20
    assert len(aiowt.actors.__all__) <= 25
    assert len(aiowt.transport.__all__) <= 25
    assert "Inc" not in aiowt.actors.__all__
    assert "SessionRecord" not in aiowt.middleware.__all__


DEPRECATED = [
    ("aiowt.actors", "CircuitBreaker", "aiowt.actors", "Breaker"),
    ("aiowt.actors", "Inc", "aiowt.actors.metrics", "Inc"),
    ("aiowt.actors", "Register", "aiowt.actors.sessions", "Register"),
    ("aiowt.actors", "Acquire", "aiowt.actors.ratelimit", "Acquire"),
    ("aiowt.actors", "Admit", "aiowt.actors.breaker", "Admit"),
    ("aiowt.actors", "StreamOpened", "aiowt.transport.events", "StreamOpened"),
    ("aiowt.actors.breaker", "CircuitBreaker", "aiowt.actors.breaker", "Breaker"),
    ("aiowt.middleware", "DefaultLogger", "aiowt.middleware", "Logger"),
    ("aiowt.middleware", "SessionRecord", "aiowt.middleware.record", "SessionRecord"),
    ("aiowt.middleware", "secrets_equal", "aiowt.middleware.auth", "secrets_equal"),
    ("aiowt.middleware.logging", "DefaultLogger", "aiowt.middleware.logging", "Logger"),
    ("aiowt.middleware.logging", "format_duration", "aiowt.middleware.access_format", None),
    ("aiowt.middleware.timing", "RECORD", "aiowt.middleware.record", "RECORD"),
    ("aiowt.middleware.timing", "when_accepted", "aiowt.middleware._plumbing", None),
]


@pytest.mark.parametrize(("old_module", "old", "new_module", "new"), DEPRECATED)
def test_old_names_still_work_and_warn(
    old_module: str, old: str, new_module: str, new: str | None
) -> None:
    with pytest.warns(DeprecationWarning, match=old):
        value = getattr(importlib.import_module(old_module), old)
    expected = getattr(importlib.import_module(new_module), new or old)
    assert value is expected


async def test_the_old_observe_keeps_its_old_contract() -> None:
    from aiowt.middleware.record import SessionRecord
    from aiowt.transport import ConnectRequest, Rejected, SessionContext

    with pytest.warns(DeprecationWarning, match="observe"):
        from aiowt.middleware.timing import observe
    request = ConnectRequest("CONNECT", "https", "x", "/x", "", "webtransport", (), ("::1", 1))

    async def refuse(ctx: SessionContext) -> None:
        raise Rejected(403, "no")

    record, error = await observe(SessionContext(request), refuse)
    assert isinstance(record, SessionRecord)
    assert record.status == 403
    assert isinstance(error, Rejected)


def test_unknown_names_are_still_attribute_errors() -> None:
    for package in (aiowt.actors, aiowt.middleware):
        with pytest.raises(AttributeError):
            package.NoSuchThing  # noqa: B018
