"""The command line: `aiowt cert` writes a usable certificate; `aiowt run` serves MODULE:ATTR."""

from __future__ import annotations

import hashlib
import signal
import socket
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from aiowt._loading import load_server
from aiowt.cli import main
from aiowt.transport import connect
from aiowt.transport.errors import UsageError
from tests.conftest import bounded, start_echo_process, start_server_process


def test_cert_writes_files_and_prints_both_hashes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cert", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    certificate = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
    der = certificate.public_bytes(Encoding.DER)
    assert hashlib.sha256(der).hexdigest() in printed
    assert "spki" in printed
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600


def test_load_server_reports_bad_targets() -> None:
    with pytest.raises(UsageError):
        load_server("no-colon")
    with pytest.raises(UsageError):
        load_server("examples.echo:nothing_here")


async def test_run_serves_the_echo_example_and_stops_on_sigterm(tmp_path: Path) -> None:
    process, port, _ = await start_echo_process(tmp_path)
    try:
        session = await connect(f"https://127.0.0.1:{port}/echo", verify=False)
        session.send_datagram(b"cli")
        async with bounded():
            assert await session.receive_datagram() == b"cli"
        await session.aclose()
    finally:
        process.send_signal(signal.SIGTERM)
        async with bounded(15):
            assert await process.wait() == 0


BAD_INPUT = {
    "a module that does not exist": (["nosuchmodule:server"], "no module named 'nosuchmodule'"),
    "a Handler class, not a Server": (["examples.echo:Echo"], 'server.route("/path", Echo)'),
    "a port out of range": (["examples.echo:server", "--port", "99999"], "use 0-65535"),
    "a missing certificate file": (
        ["examples.echo:server", "--cert", "/nowhere/cert.pem", "--key", "/nowhere/key.pem"],
        "--cert /nowhere/cert.pem: no such file",
    ),
    "a WebSocket port without WebSocket": (
        ["examples.echo:server", "--websocket-port", "4500"],
        "--websocket-port needs --websocket or --websocket-plain",
    ),
    "an address this host does not have": (
        ["examples.echo:server", "--host", "192.0.2.1", "--port", "0"],
        "cannot listen on 192.0.2.1",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_with_runs_usage_and_exit_2(
    case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args, expected = BAD_INPUT[case]
    with pytest.raises(SystemExit) as exited:
        main(["run", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("usage: aiowt run ")  # run's usage, not the top level's
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert line.startswith("aiowt run: error: ")
    assert expected in line


def test_a_port_in_use_is_named_with_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exited:
            main(["run", "examples.echo:server", "--host", "127.0.0.1", "--port", str(port)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"udp port {port} on 127.0.0.1 is in use" in err
    assert "choose another --port" in err


async def test_the_banner_shows_the_hash_of_a_certificate_from_files(tmp_path: Path) -> None:
    process, _, output = await start_server_process("examples.echo:server", tmp_path)
    try:
        assert process.stdout is not None
        cert = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
        sha256 = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
        async with bounded(10):
            while not any("serverCertificateHashes" in line for line in output):
                output.append((await process.stdout.readline()).decode())
        (line,) = [line for line in output if "serverCertificateHashes" in line]
        assert line.split()[-1] == sha256
        assert not any("cert_sha256=None" in line for line in output)
    finally:
        process.terminate()
        await process.wait()


async def test_run_serves_websocket_beside_http3(tmp_path: Path) -> None:
    process, port, _ = await start_server_process(
        "examples.echo:server", tmp_path, "--websocket-plain", "--websocket-port", "0"
    )
    assert process.stdout is not None
    try:
        async with bounded(10):
            line = (await process.stdout.readline()).decode()
        assert line.startswith("  and WebSocket on ws://localhost:")
        ws_port = int(line.split()[3].rsplit(":", 1)[1])
        for url in (f"https://127.0.0.1:{port}/echo", f"ws://127.0.0.1:{ws_port}/echo"):
            session = await connect(url, verify=False)
            session.send_datagram(b"both")
            async with bounded():
                assert await session.receive_datagram() == b"both"
            await session.aclose()
    finally:
        process.send_signal(signal.SIGTERM)
        async with bounded(15):
            assert await process.wait() == 0
