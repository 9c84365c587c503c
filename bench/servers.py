"""The servers under test, each launched in a process of its own.

- `raw`: raw aioquic (`bench/raw_server.py`), the ceiling.
- `aiowt-bare`: aiowt, an echo `Handler` and no middleware.
- `aiowt-stack`: the same with the recommended stack of seed 000 (`recommended_stack`):
  Recover, RequestID, Logger, RateLimit, BearerAuth, MaxSessions.
- `pywebtransport`: pywebtransport 0.21 (Rust QUIC core) under Python >= 3.12, where an
  interpreter with it installed can be found or made (`pywebtransport_python`).
- `raw-qh3`, `aiowt-bare-qh3`, `aiowt-stack-qh3`: the same three on the qh3 engine
  (aioquic's API on a Rust QUIC core): `bench/raw_server.py --engine qh3`, and aiowt's
  `Server(engine="qh3")`.

A server process prints `READY <port>` on stdout once it listens. Run one by hand with
`python -m bench.servers aiowt-stack --port 4433 --cert cert.pem --key key.pem`.

Diagnostics (environment): `AIOWT_BENCH_SERVER_PYTHONPATH=DIR` puts DIR first on the
aiowt servers' path (measure a candidate change of aiowt, the client unchanged);
`AIOWT_BENCH_STACK=RateLimit,Logger` keeps only those parts of the stack;
`AIOWT_BENCH_LOG=stderr` writes the servers' log lines to `bench/results/logs/`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PWT_VENV = REPO / "build" / "bench-py312"
PWT_VERSION = "0.21.1"
BENCH_TOKEN = "bench-token"
"""The bearer token the load client sends; the stack's BearerAuth accepts it."""
CLIENT_HEADERS = (("authorization", f"Bearer {BENCH_TOKEN}"),)
STACK_LIMIT = 1_000_000
"""Per-IP and global caps of the stack: every load session comes from 127.0.0.1."""

SERVER_KINDS = (
    "raw",
    "aiowt-bare",
    "aiowt-stack",
    "raw-qh3",
    "aiowt-bare-qh3",
    "aiowt-stack-qh3",
    "pywebtransport",
)
SERVER_TITLES = {
    "raw": "raw aioquic",
    "aiowt-bare": "aiowt, no middleware",
    "aiowt-stack": "aiowt, recommended stack",
    "raw-qh3": "raw qh3",
    "aiowt-bare-qh3": "aiowt on qh3, no middleware",
    "aiowt-stack-qh3": "aiowt on qh3, recommended stack",
    "pywebtransport": "pywebtransport 0.21 (Rust core)",
}
QH3_SUFFIX = "-qh3"


def engine_of(kind: str) -> str:
    """The QUIC engine a server kind runs on: `qh3` for `*-qh3`, else `aioquic`."""
    return "qh3" if kind.endswith(QH3_SUFFIX) else "aioquic"


def base_kind(kind: str) -> str:
    """The kind with its engine suffix removed: `aiowt-stack-qh3` -> `aiowt-stack`."""
    return kind.removesuffix(QH3_SUFFIX)


# ---------------------------------------------------------------------------------------
# The recommended stack
# ---------------------------------------------------------------------------------------


@dataclass
class Stack:
    """The middleware of the recommended stack, in order, and what had to stand in."""

    middleware: list[Any] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    stand_ins: list[str] = field(default_factory=list)
    """Parts whose module does not exist (yet): a bench stand-in doing the same work."""
    errors: dict[str, str] = field(default_factory=dict)


# (part, module, class names to try, argument sets to try)
_Arguments = tuple[tuple[Any, ...], dict[str, Any]]
_PARTS: tuple[tuple[str, str, tuple[str, ...], tuple[_Arguments, ...]], ...] = (
    ("Recover", "aiowt.middleware.resilience", ("Recover",), (((), {}),)),
    ("RequestID", "aiowt.middleware.request_id", ("RequestID",), (((), {}),)),
    ("Logger", "aiowt.middleware.logging", ("Logger",), (((), {}),)),
    (
        "RateLimit",
        "aiowt.middleware.limits",
        ("RateLimit",),
        (((STACK_LIMIT,), {}), ((), {"max_per_ip": STACK_LIMIT}), ((), {"limit": STACK_LIMIT})),
    ),
    ("BearerAuth", "aiowt.middleware.auth", ("BearerAuth",), ()),
    (
        "MaxSessions",
        "aiowt.middleware.limits",
        ("MaxSessions",),
        (((STACK_LIMIT,), {}), ((), {"max_sessions": STACK_LIMIT}), ((), {"limit": STACK_LIMIT})),
    ),
)


def recommended_stack() -> Stack:
    """Assemble seed 000's recommended stack from the aiowt middleware that exist.

    Order: Recover, RequestID, Logger, RateLimit (per IP), BearerAuth, MaxSessions.
    A part whose module or class is missing is replaced by a stand-in from this module
    that does the same work through the same shared actors, and is named in
    `Stack.stand_ins` (the report says so).
    """
    stack = Stack()
    for part, module_name, class_names, argument_sets in _PARTS:
        built = None
        try:
            module = importlib.import_module(module_name)
            cls = next(getattr(module, n) for n in class_names if hasattr(module, n))
            if part == "BearerAuth":
                built = cls(_bearer_validator(module))
            else:
                last: Exception | None = None
                for args, kwargs in argument_sets:
                    try:
                        built = cls(*args, **kwargs)
                        break
                    except TypeError as exc:
                        last = exc
                if built is None and last is not None:
                    raise last
        except (ImportError, StopIteration, TypeError, ValueError) as exc:
            stack.errors[part] = f"{type(exc).__name__}: {exc}"
            built = _STAND_INS[part]()
            stack.stand_ins.append(part)
        stack.middleware.append(built)
        stack.names.append(part)
    return stack


def _bearer_validator(auth_module: Any) -> Any:
    static = getattr(auth_module, "StaticTokens", None)
    if static is not None:
        return static({BENCH_TOKEN: "bench"})

    def validate(token: str) -> object:
        return "bench" if token == BENCH_TOKEN else None

    return validate


class _RecoverStandIn:
    """Recover: log and swallow a failure from further in (the session is over)."""

    def __repr__(self) -> str:
        return "Recover(stand-in)"

    async def __call__(self, ctx: Any, call_next: Any) -> None:
        import structlog

        try:
            await call_next(ctx)
        except Exception:
            if ctx.status is None:
                raise
            structlog.get_logger("aiowt.recover").exception("session failed", **ctx.ids)


class _LoggerStandIn:
    """Logger: one line when a session starts, one when it ends (with its duration)."""

    def __repr__(self) -> str:
        return "Logger(stand-in)"

    async def __call__(self, ctx: Any, call_next: Any) -> None:
        import structlog

        log = structlog.get_logger("aiowt.access")
        log.info("session started", **ctx.ids)
        started = time.monotonic()
        try:
            await call_next(ctx)
        finally:
            log.info(
                "session ended",
                status=ctx.status,
                duration=round(time.monotonic() - started, 6),
                **ctx.ids,
            )


class _RateLimitStandIn:
    """RateLimit: a per-IP slot from `RateLimitRegistry` (one ask), released by a tell."""

    def __init__(self) -> None:
        self._ref: Any = None

    def __repr__(self) -> str:
        return "RateLimit(stand-in)"

    async def __call__(self, ctx: Any, call_next: Any) -> None:
        from aiowt.actors.ratelimit import Acquire, RateLimitRegistry, Release
        from aiowt.transport.errors import Rejected

        if self._ref is None:
            self._ref = RateLimitRegistry.start()
        ip = ctx.remote_ip
        if not await self._ref.ask(Acquire("ip", ip, ctx.session_id, STACK_LIMIT), block=False):
            raise Rejected(429, "too many sessions from this address")
        try:
            await call_next(ctx)
        finally:
            self._ref.tell(Release("ip", ip, ctx.session_id))


class _MaxSessionsStandIn:
    """MaxSessions: register with `SessionRegistry` under the cap (one ask), tell at end."""

    def __init__(self) -> None:
        self._ref: Any = None

    def __repr__(self) -> str:
        return "MaxSessions(stand-in)"

    async def __call__(self, ctx: Any, call_next: Any) -> None:
        from aiowt.actors.sessions import Register, SessionRegistry, Unregister
        from aiowt.transport.errors import Rejected

        if self._ref is None:
            self._ref = SessionRegistry.start()
        ok = await self._ref.ask(
            Register(ctx.session_id, STACK_LIMIT, ctx.remote_ip, ctx.path), block=False
        )
        if not ok:
            raise Rejected(503, "server is at capacity")
        try:
            await call_next(ctx)
        finally:
            self._ref.tell(Unregister(ctx.session_id))


class _RequestIDStandIn:
    def __repr__(self) -> str:
        return "RequestID(stand-in)"

    async def __call__(self, ctx: Any, call_next: Any) -> None:
        import uuid

        ctx.request_id = uuid.uuid4().hex
        ctx.add_response_header("x-request-id", ctx.request_id)
        await call_next(ctx)


class _BearerStandIn:
    def __repr__(self) -> str:
        return "BearerAuth(stand-in)"

    async def __call__(self, ctx: Any, call_next: Any) -> None:
        from aiowt.transport.errors import Rejected

        header = ctx.request.header("authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or token != BENCH_TOKEN:
            raise Rejected(401, "bad token")
        ctx.identity = "bench"
        await call_next(ctx)


_STAND_INS: dict[str, Callable[[], Any]] = {
    "Recover": _RecoverStandIn,
    "RequestID": _RequestIDStandIn,
    "Logger": _LoggerStandIn,
    "RateLimit": _RateLimitStandIn,
    "BearerAuth": _BearerStandIn,
    "MaxSessions": _MaxSessionsStandIn,
}


# ---------------------------------------------------------------------------------------
# The aiowt server process
# ---------------------------------------------------------------------------------------


def _echo_handler() -> type[Any]:
    from aiowt import Handler, Stream

    class Echo(Handler):
        """Raw-bytes echo: datagrams back, each bidirectional stream's bytes back on it."""

        async def on_datagram(self, data: bytes) -> None:
            self.send_datagram(data)

        async def on_stream_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
            if not stream.unidirectional:
                stream.write(data, end_stream=end_stream)
                if not end_stream:
                    # Without this, a peer that reads slower than it writes fills the
                    # send buffer past its bound: the session closes with SLOW_CONSUMER.
                    await stream.drain()

    return Echo


def configure_production_logging() -> None:
    """structlog as a production server would run it: JSON lines, INFO and up.

    They go to /dev/null: the cost of building and rendering each line is paid, the
    terminal is not flooded.
    """
    import logging

    import structlog

    # AIOWT_BENCH_LOG=stderr shows the lines (in bench/results/logs/), for diagnosis.
    stderr = os.environ.get("AIOWT_BENCH_LOG") == "stderr"
    sink = sys.stderr if stderr else open(os.devnull, "w")  # noqa: SIM115 - process-long
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=sink),
        cache_logger_on_first_use=True,
    )


def build_aiowt_server(
    kind: str, host: str, port: int, cert: str | None, key: str | None
) -> tuple[Any, Stack]:
    from aiowt import Server

    # The engine is named from the kind, never left to $AIOWT_ENGINE: "aiowt-stack" is
    # aioquic even when the environment says otherwise.
    server = Server(host=host, port=port, cert_file=cert, key_file=key, engine=engine_of(kind))
    stack = Stack()
    if base_kind(kind) == "aiowt-stack":
        stack = recommended_stack()
        only = os.environ.get("AIOWT_BENCH_STACK")
        if only:  # a diagnostic: the named parts only, e.g. "RateLimit,MaxSessions"
            keep = {name.strip() for name in only.split(",")}
            parts = [(n, m) for n, m in zip(stack.names, stack.middleware, strict=True)]
            stack.names = [n for n, _ in parts if n in keep]
            stack.middleware = [m for n, m in parts if n in keep]
        server.use(*stack.middleware)
    server.route("/echo", _echo_handler())
    return server, stack


async def _serve_aiowt(
    kind: str, host: str, port: int, cert: str, key: str, backend: str | None = None
) -> None:
    import json

    from aiowt.actors.backend import backend_from_url

    server, stack = build_aiowt_server(kind, host, port, cert, key)
    if backend is not None:
        server.backend = backend_from_url(backend)
    await server.start()
    info = {"stack": stack.names, "stand_ins": stack.stand_ins, "errors": stack.errors}
    print(f"READY {server.address[1]} {json.dumps(info)}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.shutdown(timeout=2)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="run one aiowt bench server")
    parser.add_argument("kind", choices=[k for k in SERVER_KINDS if k.startswith("aiowt")])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--backend", default=None, metavar="URL", help="e.g. a Redis URL")
    args = parser.parse_args(argv)
    configure_production_logging()
    asyncio.run(_serve_aiowt(args.kind, args.host, args.port, args.cert, args.key, args.backend))


# ---------------------------------------------------------------------------------------
# Launching and stopping server processes
# ---------------------------------------------------------------------------------------


def pywebtransport_python(*, install: bool) -> tuple[str | None, str]:
    """An interpreter with pywebtransport, and a note; `install` may make the venv.

    Looks at `$AIOWT_BENCH_PY312`, then `build/bench-py312`; with `install`, creates that
    venv from a Python >= 3.12 found on PATH or in pyenv and pip-installs
    pywebtransport there (the bench's own venv stays on 3.11 and untouched).
    """
    candidates = [os.environ.get("AIOWT_BENCH_PY312", ""), str(PWT_VENV / "bin" / "python")]
    for candidate in candidates:
        if candidate and Path(candidate).exists() and _has_pywebtransport(candidate):
            return candidate, ""
    if not install:
        return None, "no Python >= 3.12 with pywebtransport (run the full bench once to make one)"
    base = _find_python312()
    if base is None:
        return None, "no Python >= 3.12 found (pywebtransport's wheel needs it)"
    try:
        subprocess.run([base, "-m", "venv", str(PWT_VENV)], check=True, capture_output=True)
        subprocess.run(
            [str(PWT_VENV / "bin" / "pip"), "install", "-q", f"pywebtransport=={PWT_VERSION}"],
            check=True,
            capture_output=True,
            timeout=300,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"could not install pywebtransport: {exc}"
    python = str(PWT_VENV / "bin" / "python")
    if _has_pywebtransport(python):
        return python, ""
    return None, "pywebtransport did not import after installing"


def _has_pywebtransport(python: str) -> bool:
    try:
        result = subprocess.run(
            [python, "-c", "import pywebtransport"], capture_output=True, timeout=30, cwd="/"
        )
    except (subprocess.SubprocessError, OSError):
        return False
    return result.returncode == 0


def _find_python312() -> str | None:
    candidates = [shutil.which(name) for name in ("python3.13", "python3.12")]
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if root.is_dir():
        for version in sorted(root.iterdir(), reverse=True):
            parts = version.name.split(".")
            if len(parts) >= 2 and parts[0] == "3" and parts[1].isdigit() and int(parts[1]) >= 12:
                candidates.append(str(version / "bin" / "python"))
    for python in candidates:
        # A pyenv shim is on PATH even when its version is not active, and then fails.
        if python and Path(python).exists() and _runs(python):
            return python
    return None


def _runs(python: str) -> bool:
    try:
        done = subprocess.run([python, "-c", "pass"], capture_output=True, timeout=30)
    except (subprocess.SubprocessError, OSError):
        return False
    return done.returncode == 0


class ServerProcess:
    """One server under test, in its own process."""

    def __init__(self, kind: str, cert: str, key: str, *, log_dir: Path, pwt_python: str = ""):
        self.kind = kind
        self.title = SERVER_TITLES[kind]
        self.log_path = log_dir / f"server-{kind}.log"
        common = ["--host", "127.0.0.1", "--port", "0", "--cert", cert, "--key", key]
        if base_kind(kind) == "raw":
            engine = ["--engine", engine_of(kind)]
            self.argv = [sys.executable, "-m", "bench.raw_server", *engine, *common]
        elif kind == "pywebtransport":
            self.argv = [pwt_python, str(REPO / "bench" / "pwt_server.py"), *common]
        else:
            self.argv = [sys.executable, "-m", "bench.servers", kind, *common]
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.info: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 30.0) -> None:
        import json

        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        # pywebtransport's server runs from / so that no file here shadows a module.
        cwd = "/" if self.kind == "pywebtransport" else str(REPO)
        env = dict(os.environ)
        overlay = env.get("AIOWT_BENCH_SERVER_PYTHONPATH")
        if overlay and self.kind.startswith("aiowt"):
            # Measure a candidate change of aiowt in the servers only, the client as is.
            env["PYTHONPATH"] = os.pathsep.join(p for p in (overlay, env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=log, cwd=cwd, env=env, start_new_session=True
        )
        log.close()
        assert self.process.stdout is not None
        line = _readline_with_timeout(self.process.stdout, timeout)
        if not line.startswith("READY "):
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.kind} server did not start ({line!r}); log:\n{tail}")
        parts = line.split(" ", 2)
        self.port = int(parts[1])
        if len(parts) > 2:
            self.info = json.loads(parts[2])
        # Nobody reads the server's stdout from now on: drain it so it can never block.
        threading.Thread(target=_drain, args=(self.process.stdout,), daemon=True).start()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(5)


def _readline_with_timeout(stream: Any, timeout: float) -> str:
    result: list[bytes] = []

    def read() -> None:
        result.append(stream.readline())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0].decode(errors="replace").strip() if result else ""


def _drain(stream: Any) -> None:
    with contextlib.suppress(Exception):
        while stream.read(65536):
            pass


if __name__ == "__main__":
    main()
