"""`MODULE:ATTR` to a `Server`, for the command line and its workers."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from aiowt.transport import UsageError

from .server import Server

__all__ = ["load_server"]


def load_server(target: str) -> Server:
    """Import `module:attribute` (like uvicorn) and return it; `UsageError` unless a `Server`."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"expected MODULE:ATTR, got {target!r}")
    sys.path.insert(0, str(Path.cwd()))
    module = importlib.import_module(module_name)
    try:
        obj: object = module
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise UsageError(f"{module_name} has no attribute {attribute!r}") from exc
    if not isinstance(obj, Server):
        raise UsageError(f"{target} is a {type(obj).__name__}, not an aiowt Server")
    return obj
