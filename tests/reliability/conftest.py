"""Fixtures of the reliability suite (the shared ones are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

import pykka
import pytest

T = TypeVar("T")


class Services:
    """Shared actors a test starts; stopped after the test's servers are shut down."""

    def __init__(self) -> None:
        self.refs: list[pykka.ActorRef[Any]] = []

    def __call__(self, ref: pykka.ActorRef[T]) -> pykka.ActorRef[T]:
        self.refs.append(ref)
        return ref


@pytest.fixture
async def services() -> AsyncIterator[Services]:
    """Request it before `make_server`: it is then torn down after the servers."""
    started = Services()
    yield started
    for ref in reversed(started.refs):
        if ref.is_alive():
            await ref.stop(block=False)
