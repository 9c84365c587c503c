"""The layers import only downwards, and only each other's public modules.

Read from the source, not from what happens to be imported at run time: every
``import`` and ``from ... import`` statement of every module counts, including the
ones under ``if TYPE_CHECKING:`` and inside functions.

    aiowt (the composition root: Server, routing, CLI, workers, testing kit)
      ├──> aiowt.middleware ──> aiowt.actors ──> aiowt.transport
      │          └──────────────────────────────────^
      └──> aiowt.actors, aiowt.transport
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FOLDERS = {"aiowt": "aiowt", "actors": "aiowt.actors", "middleware": "aiowt.middleware"}
FOLDERS["transport"] = "aiowt.transport"

ALLOWED = {
    "aiowt.transport": set(),
    "aiowt.actors": {"aiowt.transport"},
    "aiowt.middleware": {"aiowt.actors", "aiowt.transport"},
    "aiowt": {"aiowt.middleware", "aiowt.actors", "aiowt.transport"},
}
"""Layer -> the layers it may import from (besides itself)."""


def _modules() -> list[tuple[str, str, Path]]:
    """(layer, dotted module name, path) of every module of the four folders."""
    found = []
    for folder, layer in FOLDERS.items():
        for path in sorted((REPO / folder).glob("*.py")):
            name = layer if path.stem == "__init__" else f"{layer}.{path.stem}"
            found.append((layer, name, path))
    return found


def _layer_of(module: str) -> str | None:
    """The layer a dotted module belongs to, or None when it is not ours."""
    if module != "aiowt" and not module.startswith("aiowt."):
        return None
    parts = module.split(".")
    if len(parts) >= 2 and f"aiowt.{parts[1]}" in ALLOWED:
        return f"aiowt.{parts[1]}"
    return "aiowt"


def _imports(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of everything `path` imports, relative imports resolved."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    imported: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            imported.append((node.lineno, module))
            # `from aiowt import actors` imports a module too.
            imported += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return imported


MODULES = _modules()


def test_every_layer_has_modules() -> None:
    assert {layer for layer, _, _ in MODULES} == set(ALLOWED)


@pytest.mark.parametrize(("layer", "name", "path"), MODULES, ids=[m[1] for m in MODULES])
def test_imports_go_down_the_layers_only(layer: str, name: str, path: Path) -> None:
    wrong = []
    for line, module in _imports(name, path):
        target = _layer_of(module)
        if target is None or target == layer:
            continue
        if target not in ALLOWED[layer]:
            wrong.append(f"{path.relative_to(REPO)}:{line} imports {module} ({layer} -> {target})")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("layer", "name", "path"), MODULES, ids=[m[1] for m in MODULES])
def test_other_layers_are_imported_through_public_modules(
    layer: str, name: str, path: Path
) -> None:
    wrong = []
    for line, module in _imports(name, path):
        target = _layer_of(module)
        if target is None or target == layer:
            continue
        private = [part for part in module.split(".") if part.startswith("_")]
        if private:
            wrong.append(f"{path.relative_to(REPO)}:{line} imports the private {module}")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    """The two rules above would catch the imports this step removed."""
    bad = tmp_path / "router.py"
    bad.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from aiowt.middleware.chain import Middleware\n"
        "from aiowt.actors._service import ask\n"
    )
    found = {module for _, module in _imports("aiowt.transport.router", bad)}
    assert "aiowt.middleware.chain" in found  # under TYPE_CHECKING: still an import
    assert _layer_of("aiowt.middleware.chain") not in ALLOWED["aiowt.transport"]
    assert "aiowt.actors._service" in found
