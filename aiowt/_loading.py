"""`MODULE:ATTR` to a `Server`, for the command line and its workers."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from aiowt.transport import UsageError

from .server import Server

__all__ = ["load_server", "serve_websocket"]


def load_server(target: str) -> Server:
    """Import `module:attribute` (like uvicorn) and return it; `UsageError` unless a `Server`."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"expected MODULE:ATTR, got {target!r}")
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing != module_name and not module_name.startswith(f"{missing}."):
            raise  # the module exists and imports something missing: its own traceback
        raise UsageError(
            f"no module named {module_name!r} in {Path.cwd()}: run aiowt from the directory"
            " that holds it, or add that directory to PYTHONPATH"
        ) from None
    try:
        obj: object = module
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise UsageError(f"{module_name} has no attribute {attribute!r}") from exc
    if not isinstance(obj, Server):
        raise UsageError(f"{target} is {_described(obj)}, not an aiowt Server{_hint(obj)}")
    return obj


def _described(obj: object) -> str:
    if isinstance(obj, type):
        return f"the class {obj.__name__}"
    if callable(obj):
        return f"the function {getattr(obj, '__name__', repr(obj))}"
    return f"a {type(obj).__name__} ({obj!r:.40})"


def _hint(obj: object) -> str:
    from aiowt.actors import Handler

    if isinstance(obj, type) and issubclass(obj, Handler):
        name = obj.__name__
        return (
            f": a Handler serves a route of a Server; in the module, write"
            f' `server = Server()` and `server.route("/path", {name})`, then run MODULE:server'
        )
    return ": point MODULE:ATTR at the Server object (`server = Server()` in the module)"


def serve_websocket(server: Server, mode: str | None, port: int | None) -> None:
    """Apply `--websocket` (mode ``tls``) or `--websocket-plain` (``plain``) and its port."""
    if mode is None:
        if port is not None:
            raise UsageError("--websocket-port needs --websocket or --websocket-plain")
        return
    try:
        import websockets  # noqa: F401
    except ImportError:
        raise UsageError(
            "--websocket needs the websocket extra: pip install 'aiowt[websocket]'"
        ) from None
    server.websocket = True
    server.websocket_tls = mode == "tls"
    if port is not None:
        server.websocket_port = port
