"""The `aiowt` pytest plugin loads in every pytest run where aiowt is installed.

Without the `testing` extra it must load quietly (it offers no fixture then); with it,
its `actor_scope` fixture works. The first is proven in a virtual environment of its
own, with aiowt installed from this checkout and pytest, and nothing else.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

from aiowt.actors import LoopActor
from aiowt.testing import ActorScope

REPO = Path(__file__).resolve().parents[2]


class Echoes(LoopActor):
    def on_receive(self, message: object) -> object:
        return message


async def test_the_actor_scope_fixture_starts_and_stops_actors(actor_scope: ActorScope) -> None:
    ref = actor_scope.start(Echoes)
    assert await ref.ask("hi", block=False) == "hi"


def test_the_plugin_loads_without_the_testing_extra(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # A clean environment: nothing of this test run's virtualenv leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(REPO), "pytest"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    missing = subprocess.run(
        [str(python), "-c", "import pytest_asyncio"], capture_output=True, env=env, timeout=60
    )
    assert missing.returncode != 0, "pytest-asyncio must not be installed for this test"

    project = tmp_path / "project"
    project.mkdir()
    (project / "test_user.py").write_text("def test_user():\n    assert True\n")
    run = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--trace-config"],
        cwd=project,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "1 passed" in output
    assert "aiowt.pytest_plugin" in output  # it was loaded, not skipped
    assert sys.prefix != str(env_dir)
