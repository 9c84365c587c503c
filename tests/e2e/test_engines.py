"""Interop over real UDP on loopback: each engine's client against each engine's server,
and `aiowt run --engine` choosing the server's."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiowt import Server
from aiowt.transport import CloseCode, HandshakeError, connect
from aiowt.transport.tls import SelfSignedCertificate
from examples.echo import Echo
from tests.conftest import ServerFactory, bounded, start_server_process

pytest.importorskip("qh3")

PAIRS = [("aioquic", "qh3"), ("qh3", "aioquic"), ("qh3", "qh3"), ("aioquic", "aioquic")]


@pytest.mark.parametrize(("client_engine", "server_engine"), PAIRS)
async def test_every_client_engine_talks_to_every_server_engine(
    make_server: ServerFactory,
    certificate: SelfSignedCertificate,
    client_engine: str,
    server_engine: str,
) -> None:
    server = await make_server(lambda s: s.route("/echo", Echo), engine=server_engine)
    assert server.engine == server_engine
    host, port = server.address
    url = f"https://{host}:{port}"
    async with bounded(10):
        with pytest.raises(HandshakeError) as refused:
            await connect(f"{url}/nowhere", cert_hash=certificate.sha256, engine=client_engine)
        assert refused.value.status == 404
        session = await connect(f"{url}/echo", cert_hash=certificate.sha256, engine=client_engine)
        session.send_datagram(b"ping")
        assert await session.receive_datagram() == b"ping"
        stream = session.open_stream()
        payload = bytes(range(256)) * 400  # 100 KiB: many packets, flow control
        stream.write(payload, end_stream=True)
        assert await stream.read_all() == payload
        stream = session.open_stream()
        stream.send_message({"engine": client_engine})
        assert await stream.receive_message() == {"engine": client_engine}
        await session.aclose(4007, "done")
        await server.wait_idle()


@pytest.mark.parametrize("engine", ["qh3", "aioquic"])
async def test_a_pinned_certificate_is_checked_on_either_engine(
    make_server: ServerFactory, certificate: SelfSignedCertificate, engine: str
) -> None:
    server = await make_server(lambda s: s.route("/echo", Echo))
    host, port = server.address
    async with bounded(10):
        with pytest.raises(HandshakeError, match="does not match the pinned SHA-256"):
            await connect(f"https://{host}:{port}/echo", cert_hash=b"\0" * 32, engine=engine)


async def test_aiowt_run_serves_on_the_engine_it_is_told(
    tmp_path: Path, certificate: SelfSignedCertificate
) -> None:
    process, port, output = await start_server_process(
        "examples.echo:server", tmp_path, "--engine", "qh3"
    )
    try:
        assert process.stdout is not None
        async with bounded(20):
            while not any("engine=qh3" in line for line in output):
                line = (await process.stdout.readline()).decode()
                assert line, f"the server exited: {output}"
                output.append(line)
            session = await connect(f"https://127.0.0.1:{port}/echo", verify=False)
            session.send_datagram(b"hello")
            assert await session.receive_datagram() == b"hello"
            await session.aclose(CloseCode.NORMAL)
    finally:
        process.terminate()
        await process.wait()


def test_an_unknown_engine_is_refused_before_binding() -> None:
    with pytest.raises(Exception, match="unknown QUIC engine"):
        Server(engine="msquic")
