"""`Reconnecting`: a client session that comes back when its connection drops.

Opt-in, for long-lived clients: after a drop it connects again with exponential backoff
and full jitter (so that a thousand clients of a restarted server do not return in one
burst), and calls `on_session` with each new session (to subscribe again). It gives up,
and says why, when retrying cannot help: the server refused with a status such as 401
or 403, or closed the session with a code the caller named.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import structlog

from .endpoint import connect
from .errors import HandshakeError, SessionClosedError, UsageError
from .session import Session

__all__ = ["GIVE_UP_STATUSES", "Reconnecting", "backoff_delay"]

log = structlog.get_logger("aiowt.client")

GIVE_UP_STATUSES = frozenset({400, 401, 403, 404, 405, 431})
"""Refusals that a second try cannot change (429 and 503 are retried)."""


def backoff_delay(
    attempt: int, *, initial: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number `attempt` (0-based): "full jitter", a uniform
    draw below `initial * 2**attempt`, capped at `maximum`."""
    ceiling = min(maximum, initial * 2 ** min(attempt, 62))
    return (rng or random).uniform(0, ceiling)


class Reconnecting:
    """Keeps a session to `url` open: `async with Reconnecting(url, ...) as client:`.

    `client.session` is the current session (None between two); `await
    client.connected()` waits for one. `connect_options` go to `connect()` on every
    attempt (`cert_hash`, `headers`, `engine`, `timeout`, ...). The session's own close
    by this side (`aclose()` of the client) ends it for good.
    """

    def __init__(
        self,
        url: str,
        *,
        on_session: Callable[[Session], Awaitable[None]] | None = None,
        initial_delay: float = 0.5,
        max_delay: float = 30.0,
        max_attempts: int | None = None,
        give_up_statuses: Collection[int] = GIVE_UP_STATUSES,
        give_up_codes: Collection[int] = (),
        **connect_options: Any,
    ) -> None:
        if not 0 < initial_delay <= max_delay:
            raise UsageError("backoff needs 0 < initial_delay <= max_delay")
        self.url = url
        self.on_session = on_session
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.max_attempts = max_attempts
        self.give_up_statuses = frozenset(give_up_statuses)
        self.give_up_codes = frozenset(give_up_codes)
        self._options = connect_options
        self.session: Session | None = None
        self.sessions_opened = 0
        self.attempts = 0
        """Connection attempts so far, successful or not."""
        self.error: BaseException | None = None
        """Why it gave up, once it has (None after `aclose()`)."""
        self._changed = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Reconnecting:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def connected(self) -> Session:
        """The current session, once there is one; raises what made it give up."""
        while True:
            if self.session is not None and not self.session.closed:
                return self.session
            if self.done:
                raise self.error or SessionClosedError(reason="the client was closed")
            self._changed.clear()
            await self._changed.wait()

    async def finished(self) -> BaseException | None:
        """Wait until it gave up (returns why) or was closed (returns None)."""
        assert self._task is not None, "use `async with`"
        await asyncio.shield(self._task)
        return self.error

    async def aclose(self) -> None:
        """Close the current session and stop reconnecting."""
        self._closing = True
        session = self.session
        if session is not None:
            with contextlib.suppress(SessionClosedError):
                await session.aclose()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._changed.set()

    async def _run(self) -> None:
        failures = 0
        try:
            while not self._closing:
                if self.max_attempts is not None and self.attempts >= self.max_attempts:
                    raise TimeoutError(f"{self.url}: no session after {self.attempts} attempts")
                self.attempts += 1
                try:
                    session = await connect(self.url, **self._options)
                except HandshakeError as exc:
                    if exc.status in self.give_up_statuses:
                        raise
                    failure: BaseException = exc
                except (TimeoutError, OSError) as exc:
                    failure = exc
                else:
                    failures = 0
                    info = await self._live(session)
                    if self._closing:
                        return
                    if info.code in self.give_up_codes:
                        raise SessionClosedError(info.code, info.reason)
                    failure = SessionClosedError(info.code, info.reason)
                delay = backoff_delay(failures, initial=self.initial_delay, maximum=self.max_delay)
                failures += 1
                log.info("reconnecting", url=self.url, after=round(delay, 3), error=str(failure))
                await asyncio.sleep(delay)  # the backoff itself: nothing to wait on
        except (HandshakeError, SessionClosedError, TimeoutError) as exc:
            self.error = exc
            log.info("not reconnecting", url=self.url, error=str(exc))
        finally:
            self.session = None
            self._changed.set()

    async def _live(self, session: Session) -> Any:
        self.session = session
        self.sessions_opened += 1
        self._changed.set()
        if self.on_session is not None:
            await self.on_session(session)
        info = await session.wait_closed()
        self.session = None
        await session.aclose()  # its QUIC connection too
        return info
