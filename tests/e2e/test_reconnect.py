"""`Reconnecting`: a long-lived client comes back after the server restarts, calls its
hook again, and gives up when retrying cannot help."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from aiowt import Server
from aiowt.middleware.auth import BearerAuth
from aiowt.transport import HandshakeError, Session, SessionClosedError
from aiowt.transport.reconnect import Reconnecting, backoff_delay
from aiowt.transport.tls import SelfSignedCertificate
from examples.echo import Echo
from tests.conftest import bounded


class Bouncer(Echo):
    async def on_start(self) -> None:
        self.close(4401, "token revoked")


async def _server(certificate: SelfSignedCertificate, port: int = 0) -> Server:
    server = Server(host="127.0.0.1", port=port, certificate=certificate)
    server.route("/echo", Echo)
    server.route("/private", Echo, BearerAuth(lambda token: "ada" if token == "ok" else None))
    server.route("/bounce", Bouncer)
    await server.start()
    return server


async def test_the_client_comes_back_after_a_restart_and_resubscribes(
    certificate: SelfSignedCertificate,
) -> None:
    first = await _server(certificate)
    host, port = first.address
    subscribed: asyncio.Queue[Session] = asyncio.Queue()

    async def on_session(session: Session) -> None:
        stream = session.open_stream()
        stream.send_message({"subscribe": "news"})  # what a real client would resend
        subscribed.put_nowait(session)

    client = Reconnecting(
        f"https://{host}:{port}/echo",
        cert_hash=certificate.sha256,
        on_session=on_session,
        initial_delay=0.05,
        max_delay=0.2,
    )
    second: Server | None = None
    async with client, bounded(20):
        one = await subscribed.get()
        await first.shutdown()  # GOING_AWAY to the session
        second = await _server(certificate, port)
        two = await subscribed.get()
        assert two is not one
        assert one.closed
        session = await client.connected()
        assert session is two
        session.send_datagram(b"back")
        assert await session.receive_datagram() == b"back"
    assert client.sessions_opened == 2
    assert client.error is None
    await second.shutdown()


async def _gives_up(
    certificate: SelfSignedCertificate, path: str, **options: Any
) -> tuple[BaseException | None, Reconnecting]:
    """Run a client against `path` until it gives up; (why, the client)."""
    server = await _server(certificate)
    host, port = server.address
    client = Reconnecting(
        f"https://{host}:{port}{path}", cert_hash=certificate.sha256, initial_delay=0.01, **options
    )
    try:
        async with client, bounded(10):
            error = await client.finished()
    finally:
        await server.shutdown()
    return error, client


async def test_a_refusal_that_retrying_cannot_change_ends_it(
    certificate: SelfSignedCertificate,
) -> None:
    error, client = await _gives_up(certificate, "/private")
    assert isinstance(error, HandshakeError)
    assert error.status == 401
    assert client.attempts == 1


async def test_a_close_code_named_by_the_caller_ends_it(
    certificate: SelfSignedCertificate,
) -> None:
    error, client = await _gives_up(certificate, "/bounce", give_up_codes={4401})
    assert isinstance(error, SessionClosedError)
    assert (error.code, client.sessions_opened) == (4401, 1)


def test_the_backoff_doubles_with_full_jitter_up_to_its_cap() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(8.0, 0.5 * 2**attempt)
        draws = [backoff_delay(attempt, initial=0.5, maximum=8.0, rng=rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in draws)
        assert max(draws) > 0.8 * ceiling  # it spreads over the whole range
        assert min(draws) < 0.2 * ceiling
