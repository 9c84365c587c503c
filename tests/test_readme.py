"""Every code block of the README runs as written: the handler, the client against it,
the browser snippet (in node, with WebTransport stood in), the middleware and the bounds."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from aiowt import Server
from tests.conftest import bounded

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def run_block(code: str) -> dict[str, Any]:
    """The block run as a module that is imported, not run as a script."""
    namespace: dict[str, Any] = {"__name__": "readme_block"}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def test_the_readme_has_the_blocks_this_test_runs() -> None:
    assert len(blocks("python")) == 4
    assert len(blocks("js")) == 1


def test_every_python_block_runs_and_builds_a_server() -> None:
    for code in blocks("python"):
        namespace = run_block(code)
        if "server" in namespace:
            assert isinstance(namespace["server"], Server)
        else:
            assert callable(namespace["main"])


async def test_the_client_block_talks_to_the_handler_block(
    capsys: pytest.CaptureFixture[str],
) -> None:
    handler, client = blocks("python")[:2]
    server: Server = run_block(handler)["server"]
    server.host, server.port = "127.0.0.1", 0
    await server.start()
    try:
        assert server.certificate is not None
        host, port = server.address
        async with bounded(10):
            await run_block(client)["main"](
                f"https://{host}:{port}/echo", server.certificate.sha256_hex
            )
    finally:
        await server.shutdown()
    printed = capsys.readouterr().out.splitlines()
    echoed = [line for line in printed if line.startswith(("b'", "{"))]  # not the log lines
    assert echoed == ["b'ping'", "{'type': 'say', 'text': 'hi'}"]


def test_the_browser_block_runs_in_node_and_passes_the_hash_as_bytes(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (make test installs it with npm)")
    (code,) = blocks("js")
    digest = "ab" * 32
    stub = (
        "globalThis.WebTransport = class {\n"
        "  constructor(url, options) { this.ready = Promise.resolve();\n"
        "    const value = Array.from(options.serverCertificateHashes[0].value);\n"
        "    console.log(JSON.stringify({url, value})); }\n"
        "};\n"
    )
    script = tmp_path / "snippet.mjs"
    script.write_text(stub + code.replace('"…"', json.dumps(digest)))
    result = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["url"] == "https://localhost:4433/echo"
    assert bytes(seen["value"]) == bytes.fromhex(digest)
