"""Fixtures shared by the middleware unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pykka
import pytest

from aiowt.actors import MetricsCollector


@pytest.fixture
async def metrics() -> AsyncIterator[pykka.ActorRef[MetricsCollector]]:
    """A collector of the test's own, stopped after it."""
    ref = MetricsCollector.start()
    yield ref
    await ref.stop(block=False)
