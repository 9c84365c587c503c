"""What the Python client says when it cannot get in: the reason and what to do, on
either engine, and nothing else on the terminal."""

from __future__ import annotations

import importlib.util
import socket
import time

import pytest

from aiowt.transport import HandshakeError, connect
from aiowt.transport.tls import SelfSignedCertificate
from examples.echo import Echo
from tests.conftest import ServerFactory, bounded

HAS_QH3 = importlib.util.find_spec("qh3") is not None
ENGINES = [
    "aioquic",
    pytest.param("qh3", marks=pytest.mark.skipif(not HAS_QH3, reason="the qh3 extra is absent")),
]


@pytest.mark.parametrize("engine", ENGINES)
async def test_an_untrusted_certificate_says_how_to_pin_it(
    make_server: ServerFactory, engine: str, capfd: pytest.CaptureFixture[str]
) -> None:
    server = await make_server(lambda s: s.route("/echo", Echo))
    host, port = server.address
    async with bounded(10):
        with pytest.raises(HandshakeError) as refused:
            await connect(f"https://{host}:{port}/echo", engine=engine)
    message = str(refused.value)
    assert message.startswith("handshake failed: the server's certificate is not trusted (")
    assert "cert_hash=" in message
    assert " 0 " not in message
    assert "Error: 298" not in capfd.readouterr().err  # no stray library line


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_wrong_pin_is_named_without_a_status(
    make_server: ServerFactory, engine: str, certificate: SelfSignedCertificate
) -> None:
    server = await make_server(lambda s: s.route("/echo", Echo))
    host, port = server.address
    async with bounded(10):
        with pytest.raises(HandshakeError) as refused:
            await connect(f"https://{host}:{port}/echo", cert_hash=b"\1" * 32, engine=engine)
    assert str(refused.value) == (
        "handshake failed: server certificate does not match the pinned SHA-256"
    )


async def test_nothing_listening_names_the_address_and_the_time_waited() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as quiet:
        quiet.bind(("127.0.0.1", 0))  # bound, never read: datagrams vanish
        port = quiet.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(TimeoutError) as waited:
            await connect(f"https://127.0.0.1:{port}/echo", timeout=0.5, verify=False)
    assert time.monotonic() - started < 5
    assert str(waited.value).startswith(f"no answer from 127.0.0.1 port {port} within 0.5 s")
