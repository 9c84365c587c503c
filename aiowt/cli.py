"""`aiowt run MODULE:ATTR` and `aiowt cert`: the command line."""

from __future__ import annotations

import argparse
import errno
from collections.abc import Sequence
from pathlib import Path

from aiowt.actors.backend import backend_from_url
from aiowt.transport import UsageError
from aiowt.transport.engine import ENGINES, get_engine
from aiowt.transport.tls import generate_self_signed, write_certificate

from ._loading import load_server, serve_websocket
from .workers import supervise

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aiowt", description="aiowt WebTransport runtime")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="serve MODULE:ATTR (a Server)")
    run.add_argument("target", metavar="MODULE:ATTR")
    run.add_argument("--host", default=None, help="bind address (default: the server's, '::')")
    run.add_argument(
        "--port", type=_port, default=None, help="UDP port (default: the server's, 4433)"
    )
    tls = run.add_mutually_exclusive_group()
    tls.add_argument("--cert", help="certificate chain (PEM); needs --key")
    tls.add_argument(
        "--self-signed",
        action="store_true",
        help="a fresh 13-day development certificate (the default)",
    )
    run.add_argument("--key", help="private key (PEM)")
    run.add_argument(
        "--backend",
        metavar="URL",
        default=None,
        help=(
            "where the shared limits live: memory: (this process, the default) or a Redis"
            " URL (redis://[user:pass@]host[:port][/db], rediss://, unix:///path.sock),"
            " options as ?prefix=&lease=&timeout=&failure=&processes="
        ),
    )
    run.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help=(
            "the QUIC library: aioquic or qh3 (Rust core; pip install 'aiowt[qh3]')"
            " (default: the server's, $AIOWT_ENGINE, else aioquic)"
        ),
    )
    websocket = run.add_mutually_exclusive_group()
    websocket.add_argument(
        "--websocket",
        action="store_const",
        const="tls",
        help=(
            "also serve the routes over WebSocket (wss://, TCP, same port number) for"
            " clients without HTTP/3 (pip install 'aiowt[websocket]')"
        ),
    )
    websocket.add_argument(
        "--websocket-plain",
        dest="websocket",
        action="store_const",
        const="plain",
        help="as --websocket, but plain ws:// (behind a TLS proxy, or on localhost)",
    )
    run.add_argument(
        "--websocket-port",
        type=_port,
        default=None,
        help="the WebSocket TCP port (default: --port's number)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help=(
            "serve from N processes sharing the UDP port (SO_REUSEPORT), restarted if they"
            " crash; limits are per process unless --backend shares them, and a client"
            " that changes address (connection migration) loses its connection (default: 1)"
        ),
    )

    run.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help=(
            "serve GET /metrics there: the sum of every worker's metrics at each scrape"
            " (Prometheus format; needs the prometheus extra; runs the server as workers)"
        ),
    )
    run.add_argument("--metrics-host", default="127.0.0.1", help="where --metrics-port listens")

    cert = commands.add_parser("cert", help="write a self-signed development certificate")
    cert.add_argument("--out", default=".", help="directory for cert.pem and key.pem (default: .)")
    cert.add_argument("--days", type=int, default=13, help="validity, at most 13 days")

    args = parser.parse_args(argv)
    command = run if args.command == "run" else cert
    try:
        if args.command == "cert":
            return _cert(Path(args.out), args.days)
        return _run(args)
    except UsageError as exc:
        command.error(str(exc))  # one line, this command's usage, exit 2
    return 2


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a UDP port: use 0-65535 (0: any free)")
    return port


def _existing(flag: str, path: str | None) -> None:
    if path is not None and not Path(path).is_file():
        raise UsageError(f"{flag} {path}: no such file (make one with `aiowt cert`)")


def _cert(out: Path, days: int) -> int:
    certificate = generate_self_signed(days=days)
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = write_certificate(certificate, out)
    print(f"wrote {cert_path} and {key_path}")
    print(f"sha256 (serverCertificateHashes): {certificate.sha256_hex}")
    print(f"spki sha256 (--ignore-certificate-errors-spki-list): {certificate.spki_sha256_b64}")
    return 0


def _run(args: argparse.Namespace) -> int:
    _existing("--cert", args.cert)
    _existing("--key", args.key)
    if args.workers != 1 or args.metrics_port is not None:
        if args.workers < 1:
            raise UsageError(f"--workers must be at least 1, got {args.workers}")
        return supervise(
            args.target,
            workers=args.workers,
            host=args.host,
            port=args.port,
            cert_file=args.cert,
            key_file=args.key,
            backend=args.backend,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            engine=args.engine,
            websocket=args.websocket,
            websocket_port=args.websocket_port,
        )

    server = load_server(args.target)
    serve_websocket(server, args.websocket, args.websocket_port)
    if args.backend is not None:
        server.backend = backend_from_url(args.backend)
    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together")
    if args.engine is not None:
        get_engine(args.engine)  # its library is installed, or a one-line error
        server.engine = args.engine
    if args.host is not None:
        server.host = args.host
    if args.port is not None:
        server.port = args.port
    if args.cert is not None:
        server.use_certificate_files(args.cert, args.key)
    try:
        server.run()
    except OSError as exc:
        raise UsageError(_bind_error(exc, server.host, server.port)) from None
    return 0


def _bind_error(exc: OSError, host: str, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"udp port {port} on {host} is in use (another aiowt, or `make demo`, is"
            " running?): stop it or choose another --port"
        )
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EACCES):
        return f"cannot listen on {host} port {port}: {exc.strerror}: choose another --host"
    return f"cannot listen on {host} port {port}: {exc}"


if __name__ == "__main__":
    raise SystemExit(main())
