"""pytest fixtures of the aiowt testing kit (registered as the `aiowt` pytest plugin).

- `actor_scope`: an `ActorScope` whose actors are stopped after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from .testing import ActorScope

__all__ = ["actor_scope"]


@pytest_asyncio.fixture
async def actor_scope() -> AsyncIterator[ActorScope]:
    """Start actors with `actor_scope.start(Cls, ...)`; all are stopped after the test."""
    async with ActorScope() as scope:
        yield scope
