"""pytest fixtures of the aiowt testing kit (registered as the `aiowt` pytest plugin).

- `actor_scope`: an `ActorScope` whose actors are stopped after the test.

The plugin loads in every pytest run where aiowt is installed, so it must load without
the `testing` extra: the fixtures are registered only when pytest-asyncio is there, and
the kit (which needs hypothesis) is imported when a fixture is first used.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

__all__: list[str] = []

if TYPE_CHECKING:
    from .testing import ActorScope

if importlib.util.find_spec("pytest_asyncio") is not None:
    import pytest_asyncio

    @pytest_asyncio.fixture
    async def actor_scope() -> AsyncIterator[ActorScope]:
        """Start actors with `actor_scope.start(Cls, ...)`; all are stopped after the test."""
        from .testing import ActorScope

        async with ActorScope() as scope:
            yield scope

    __all__ += ["actor_scope"]
