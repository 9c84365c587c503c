"""The command line: `aiowt cert` writes a usable certificate; `aiowt run` serves MODULE:ATTR."""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from aiowt._loading import load_server
from aiowt.cli import main
from aiowt.transport import connect
from aiowt.transport.errors import UsageError
from tests.conftest import bounded, start_echo_process


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
