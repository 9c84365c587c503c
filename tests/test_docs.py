"""The code on the documentation pages runs, so it cannot drift from the code."""

from __future__ import annotations

import asyncio
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ["testing.md", "stats.md"]


def code_of(page: str) -> str:
    text = (DOCS / page).read_text()
    return "\n\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S))


@pytest.mark.parametrize("page", PAGES)
def test_page_code_runs(page: str) -> None:
    namespace: dict[str, Any] = {"__name__": f"docs_{page.replace('.', '_')}"}
    exec(compile(code_of(page), str(DOCS / page), "exec"), namespace)
    tests = [value for name, value in namespace.items() if name.startswith("test_")]
    assert tests, f"{page} has no test_ functions"
    for test in tests:
        result = test()
        if inspect.iscoroutine(result):
            asyncio.run(result)


def test_the_readme_states_the_real_defaults() -> None:
    """The README's "Bounds and their defaults" block builds a server equal to `Server()`."""
    from aiowt import Server
    from aiowt.transport import ConnectionLimits

    readme = (DOCS.parent / "README.md").read_text()
    section = readme.split("## Bounds and their defaults", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert block is not None
    documented = eval(block.group(1), {"Server": Server, "ConnectionLimits": ConnectionLimits})
    default = Server()
    for name in inspect.signature(Server).parameters:
        if name in {
            "host",
            "port",
            "cert_file",
            "key_file",
            "certificate",
            "reuse_port",
            "services",
        }:
            continue
        assert getattr(documented, name) == getattr(default, name), name
