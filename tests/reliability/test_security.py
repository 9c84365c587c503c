"""Security: secrets out of logs, reprs and metrics; constant-time comparison; size limits
with safe defaults; a compression bomb refused; bounded metric labels.

Each test sends real sessions (in memory: the whole stack minus the socket) through the
middleware that would leak if they were careless, and greps everything observable: every
structlog event (with contextvars merged), every access-log line (text and JSON), the
`repr` of every middleware and chain, the metrics snapshot and its Prometheus text.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hmac
import tracemalloc
from typing import Any

import msgpack
import pytest

from aiowt import Server
from aiowt.actors import Handler, ask
from aiowt.actors.metrics import (
    Inc,
    MetricsCollector,
    TakeSnapshot,
)
from aiowt.middleware import auth
from aiowt.middleware.auth import BasicAuth, BearerAuth, QueryAuth, RequireKey, StaticTokens
from aiowt.middleware.compress import COMPRESSOR, GZIP_EXT, Compress
from aiowt.middleware.control import ErrorHandler
from aiowt.middleware.extract import SessionData
from aiowt.middleware.limits import PerPathRateLimit, RateLimit
from aiowt.middleware.logging import COMBINED_LOG_FORMAT, AccessLog, JsonAccessLog, Logger
from aiowt.middleware.metrics import Metrics, PrometheusMetrics
from aiowt.middleware.request_id import RequestID
from aiowt.transport import CloseCode, ConnectionLimits, HandshakeError, Session, Stream
from aiowt.transport.capsule import MAX_CAPSULE_SIZE
from aiowt.transport.framing import DEFAULT_MAX_MESSAGE_SIZE, encode_frame, encode_message
from aiowt.transport.session import Session as TransportSession
from examples.echo import Echo
from tests.conftest import bounded
from tests.reliability.conftest import Services
from tests.reliability.support import watching

TOKEN = "tok-ZEBRA-7f3a9c1e-SECRET"
PASSWORD = "pw-OKAPI-4b8d2e6f-SECRET"
API_KEY = "key-NARWHAL-9a1c5e7b-SECRET"
WRONG = "wrong-QUOKKA-2d4f6a8c-SECRET"
SECRETS = [
    TOKEN,
    PASSWORD,
    API_KEY,
    WRONG,
    base64.b64encode(f"admin:{PASSWORD}".encode()).decode(),
    base64.b64encode(f"admin:{WRONG}".encode()).decode(),
]


def check_password(user: str, password: str) -> bool:
    return user == "admin" and auth.secrets_equal(password, PASSWORD)


def leaky_validator(token: str) -> object:
    """A validator whose exceptions quote the credential (as real ones do)."""
    if token == TOKEN:
        return "alice"
    raise ValueError(f"unknown token {token!r}")


def _basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()


# (path, headers) of accepted and refused attempts for every scheme.
ATTEMPTS: list[tuple[str, list[tuple[str, str]], bool]] = [
    ("/bearer", [("authorization", f"Bearer {TOKEN}")], True),
    ("/bearer", [("authorization", f"Bearer {WRONG}")], False),
    ("/bearer", [("authorization", f"Bearer {WRONG} é")], False),  # malformed
    ("/leaky", [("authorization", f"Bearer {TOKEN}")], True),
    ("/leaky", [("authorization", f"Bearer {WRONG}")], False),  # the validator raises
    ("/basic", [("authorization", _basic(PASSWORD))], True),
    ("/basic", [("authorization", _basic(WRONG))], False),
    ("/key", [("x-api-key", API_KEY)], True),
    ("/key", [("x-api-key", WRONG)], False),
    (f"/query?token={TOKEN}", [], True),
    (f"/query?token={WRONG}", [], False),
    (f"/query?token={WRONG}&token={TOKEN}", [], False),  # given twice
]


def _build(server: Server, lines: list[str], collector: Any) -> None:
    server.use(
        ErrorHandler(),
        RequestID(),
        Logger(),
        AccessLog(COMBINED_LOG_FORMAT, sink=lines.append),
        JsonAccessLog(sink=lines.append),
        Metrics(collector),
        SessionData(),
    )
    tokens = StaticTokens({TOKEN: "alice"})
    server.route("/bearer", Echo, BearerAuth(tokens, realm="r"))
    server.route("/leaky", Echo, BearerAuth(leaky_validator))
    server.route("/basic", Echo, BasicAuth("r", check_password))
    server.route("/key", Echo, RequireKey("x-api-key", API_KEY, identity="service"))
    server.route("/query", Echo, QueryAuth("token", tokens))


async def _attempt(server: Server, path: str, headers: list[tuple[str, str]]) -> bool:
    refusal: HandshakeError | None = None
    try:
        session = await server.connect_in_memory(path, headers=headers)
    except HandshakeError as refused:
        refusal = refused
    if refusal is not None:
        assert 400 <= refusal.status < 500, refusal
        assert not [secret for secret in SECRETS if secret in refusal.reason]
        return False
    async with bounded(5):
        session.send_datagram(b"ping")
        assert await session.receive_datagram() == b"ping"
        await session.aclose()
    return True


def _leaks(texts: dict[str, str]) -> list[str]:
    return [
        f"{where}: {secret}"
        for where, text in texts.items()
        for secret in SECRETS
        if secret in text
    ]


async def test_secrets_never_reach_logs_reprs_or_metrics(services: Services) -> None:
    collector = services(MetricsCollector.start())
    lines: list[str] = []
    server = Server()
    _build(server, lines, collector)
    with watching(asyncio.get_running_loop()) as watch:
        for path, headers, accepted in ATTEMPTS:
            assert await _attempt(server, path, headers) == accepted, path
        await server.wait_idle()
        prometheus = PrometheusMetrics(collector, process=False)
        exposition, _ = await prometheus.render()
    await server.shutdown()
    assert len(lines) == 2 * len(ATTEMPTS)  # one text line and one JSON line each
    snapshot = await ask(collector, TakeSnapshot())
    chains = server.chains.values()
    texts = {
        "structlog": "\n".join(repr(event) for event in watch.logs),
        "access log": "\n".join(lines),
        "reprs": "\n".join(
            [repr(c) for c in chains] + [repr(mw) for c in chains for mw in c.middleware]
        ),
        "metrics": repr(snapshot),
        "prometheus": exposition.decode(),
    }
    assert not _leaks(texts), _leaks(texts)
    # The logs are not empty: refusals are logged (with the scheme and the reason).
    assert any(e.get("event") == "refused: authentication" for e in watch.logs)
    assert any(e.get("event") == "auth callback raised; refusing" for e in watch.logs)
    watch.check(allowed=["refused:", "auth callback raised"])


async def test_a_query_token_is_redacted_whatever_its_parameter_is_called() -> None:
    lines: list[str] = []
    server = Server()
    server.use(AccessLog(COMBINED_LOG_FORMAT, sink=lines.append), JsonAccessLog(sink=lines.append))
    server.route("/q", Echo, QueryAuth("key", StaticTokens({TOKEN: "alice"})))
    with watching() as watch:
        assert await _attempt(server, f"/q?key={TOKEN}", [])
        assert not await _attempt(server, f"/q?key={WRONG}", [])
        await server.wait_idle()
    await server.shutdown()
    texts = {"access log": "\n".join(lines), "structlog": repr(watch.logs)}
    assert not _leaks(texts), _leaks(texts)


async def test_an_api_key_header_is_redacted_whatever_it_is_called() -> None:
    lines: list[str] = []
    server = Server()
    server.use(AccessLog('"%{X-Door-Key}i" %q', sink=lines.append))
    server.route("/k", Echo, RequireKey("x-door-key", API_KEY))
    with watching() as watch:
        assert await _attempt(server, "/k", [("x-door-key", API_KEY)])
        assert not await _attempt(server, "/k", [("x-door-key", WRONG)])
        await server.wait_idle()
    await server.shutdown()
    assert lines == ['"REDACTED" '] * 2, lines
    assert not _leaks({"structlog": repr(watch.logs)})


async def test_secrets_are_compared_with_compare_digest_on_fixed_size_digests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every credential check goes through `hmac.compare_digest` on 32-byte digests, so
    neither the content nor the length of a wrong secret changes the comparison's time.
    (Replace it with `==` and this fails.)"""
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    server = Server()
    tokens = StaticTokens({TOKEN: "alice", "other-token": "bob", "third": "carol"})
    server.route("/bearer", Echo, BearerAuth(tokens))
    server.route("/basic", Echo, BasicAuth("r", check_password))
    server.route("/key", Echo, RequireKey("x-api-key", API_KEY))
    server.route("/query", Echo, QueryAuth("token", tokens))
    for path, headers, accepted in [
        ("/bearer", [("authorization", f"Bearer {TOKEN}")], True),
        ("/bearer", [("authorization", "Bearer x")], False),  # short wrong token
        ("/bearer", [("authorization", f"Bearer {WRONG * 20}")], False),  # long one
        ("/basic", [("authorization", _basic(PASSWORD))], True),
        ("/basic", [("authorization", _basic("p"))], False),
        ("/key", [("x-api-key", API_KEY)], True),
        ("/key", [("x-api-key", "k")], False),
        (f"/query?token={TOKEN}", [], True),
        ("/query?token=t", [], False),
    ]:
        calls.clear()
        assert await _attempt(server, path, headers) == accepted, path
        assert calls, f"{path}: no constant-time comparison"
        assert set(calls) == {(32, 32)}, (path, calls)
        if path.startswith(("/bearer", "/query")):
            # StaticTokens compares against every entry, whichever matches (or none).
            assert len(calls) == 3, (path, calls)
    await server.shutdown()


# --- size limits ----------------------------------------------------------------------------


def test_size_limits_have_safe_defaults() -> None:
    assert Server().max_message_size == DEFAULT_MAX_MESSAGE_SIZE == 1024 * 1024
    limits = Server().connection_limits
    assert limits.max_header_bytes == 16 * 1024
    assert MAX_CAPSULE_SIZE == 16 * 1024
    assert limits.max_pending_datagrams == 1024
    assert limits.max_sessions_per_connection == 64
    assert limits.idle_timeout == 10.0
    assert TransportSession.max_queued_datagrams == 1024


class Counting(Handler):
    """Answers each message with its size (msgpack-encoded), on its stream or as a datagram."""

    async def on_message(self, message: Any, stream: Stream | None) -> None:
        size = len(message) if isinstance(message, bytes) else -1
        if stream is None:
            self.send_datagram_message(size)
        else:
            stream.send_message(size)


@pytest.mark.parametrize("limit", [300, 2_000])
async def test_the_message_size_limit_is_configurable_and_enforced(limit: int) -> None:
    server = Server(max_message_size=limit)
    server.route("/n", Counting)
    try:
        async with bounded(10):
            # At the limit: accepted, on a stream and (if it fits a packet) as a datagram.
            body = b"x" * (limit - 3)  # bin 16 header: 3 bytes
            assert len(encode_message(body)) == limit
            session = await server.connect_in_memory("/n")
            stream = session.open_stream()
            stream.write(encode_frame(body, max_size=limit))
            assert await stream.receive_message() == len(body)
            if limit <= session.max_datagram_size:
                session.send_datagram(encode_message(body))
                assert await session.receive_datagram_message() == len(body)
            # One byte over: the session is closed with MESSAGE_TOO_LARGE.
            stream.write(encode_frame(body + b"x", max_size=limit + 1))
            assert (await session.wait_closed()).code == CloseCode.MESSAGE_TOO_LARGE
            await session.aclose()

            if limit + 1 <= session.max_datagram_size:
                session = await server.connect_in_memory("/n")
                session.send_datagram(encode_message(body + b"x"))
                assert (await session.wait_closed()).code == CloseCode.MESSAGE_TOO_LARGE
                await session.aclose()

            # A frame announcing 4 GiB is refused from its 4-byte header, before any body.
            session = await server.connect_in_memory("/n")
            session.open_stream().write((2**32 - 1).to_bytes(4, "big"))
            assert (await session.wait_closed()).code == CloseCode.MESSAGE_TOO_LARGE
            await session.aclose()
    finally:
        await server.shutdown()


async def test_the_header_block_limit_is_configurable() -> None:
    server = Server(connection_limits=ConnectionLimits(max_header_bytes=2048))
    server.route("/echo", Echo)
    try:
        with pytest.raises(HandshakeError) as refused:
            await server.connect_in_memory("/echo", headers=[("x-big", "v" * 2100)])
        assert refused.value.status == 431
        session = await server.connect_in_memory("/echo", headers=[("x-big", "v" * 1500)])
        await session.aclose()
    finally:
        await server.shutdown()


# --- a compression bomb ---------------------------------------------------------------------


class Unwrapping(Handler):
    """Decompresses what the negotiated codec compressed; answers with the size."""

    async def on_message(self, message: Any, stream: Stream | None) -> None:
        data = self.ctx.get(COMPRESSOR).unwrap(message)
        assert stream is not None
        stream.send_message(len(data) if isinstance(data, bytes | str) else -1)


async def test_a_compression_bomb_is_refused_without_inflating_it() -> None:
    server = Server()
    server.route("/z", Unwrapping, Compress("gzip"))
    bomb_size = 256 * 1024 * 1024  # 256 MiB of zeros ...
    bomb = gzip.compress(encode_message(b"\x00" * bomb_size), compresslevel=9)
    assert len(bomb) < DEFAULT_MAX_MESSAGE_SIZE  # ... in ~250 KiB: within the frame limit
    frame = encode_frame(msgpack.ExtType(GZIP_EXT, bomb))
    try:
        session = await server.connect_in_memory("/z", headers=[("wt-compress", "gzip")])
        assert session.request.header("wt-compress") == "gzip"
        stream = session.open_stream()
        # A small compressed message works.
        stream.send_message(msgpack.ExtType(GZIP_EXT, gzip.compress(encode_message(b"ok" * 500))))
        async with bounded(10):
            assert await stream.receive_message() == 1000
            tracemalloc.start()
            try:
                stream.write(frame)
                info = await session.wait_closed()
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        assert info.code == CloseCode.MESSAGE_TOO_LARGE, info
        # Inflating stopped at the limit: the peak is a few MiB, not 256.
        assert peak < 16 * 1024 * 1024, peak
        await session.aclose()
    finally:
        await server.shutdown()


# --- metric label cardinality ---------------------------------------------------------------


async def test_raw_paths_and_user_agents_never_become_metric_labels(services: Services) -> None:
    collector = services(MetricsCollector.start())
    server = Server()
    server.use(Metrics(collector), RateLimit(1_000), PerPathRateLimit(1))
    server.route("/room/{name}", Echo)
    server.route("/lobby", Echo)
    raw: list[str] = []
    held: list[Session] = []
    try:
        async with bounded(60):
            for n in range(30):
                path, agent = f"/room/r{n}-RAW", f"Agent-{n}-UA"
                raw += [path, agent]
                session = await server.connect_in_memory(path, headers=[("user-agent", agent)])
                held.append(session)
                with pytest.raises(HandshakeError) as refused:  # PerPathRateLimit: 429
                    await server.connect_in_memory(path, headers=[("user-agent", agent)])
                assert refused.value.status == 429
            for n in range(10):  # no route: answered 404 before any middleware
                with pytest.raises(HandshakeError):
                    await server.connect_in_memory(f"/nowhere/{n}-RAW")
            for session in held:
                await session.aclose()
            await server.wait_idle()
            exposition, _ = await PrometheusMetrics(collector, process=False).render()
    finally:
        await server.shutdown()
    snapshot = await ask(collector, TakeSnapshot())
    labels = {
        (name, value)
        for family in snapshot.families.values()
        for label_set in family.series
        for name, value in label_set
    }
    text = exposition.decode()
    assert not [v for _, v in labels if "RAW" in v or "UA" in v], labels
    assert "RAW" not in text
    assert "-UA" not in text
    assert {v for n, v in labels if n == "route"} == {"/room/{name}"}
    assert len(labels) < 20, labels  # a handful, whatever the number of paths and agents


async def test_the_metrics_collector_caps_label_sets_per_metric(services: Services) -> None:
    collector = services(MetricsCollector.start(max_series=10))
    for n in range(1_000):  # a careless caller labelling by something unbounded
        collector.tell(Inc("careless_total", labels={"path": f"/p/{n}"}))
    snapshot = await ask(collector, TakeSnapshot())
    family = snapshot.families["careless_total"]
    assert len(family.series) <= 11  # 10, and the overflow series
    assert family.overflowed == 990
    assert snapshot.total("careless_total") == 1_000  # nothing lost, only folded
