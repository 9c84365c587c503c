"""The ceiling: a WebTransport echo server on a raw QUIC library, with no aiowt code.

`--engine aioquic` (default) runs it on aioquic, `--engine qh3` on qh3 (aioquic's API on
a Rust QUIC core). It serves any path: a CONNECT is answered 200, every datagram is sent
back, the bytes of every client-opened bidirectional stream are written back on the same
stream (FIN for FIN), and a FIN or close capsule on the CONNECT stream is answered with a
FIN. It applies the same fair tunings aiowt uses (see ../shared/aioquic-notes.md): a
4 MiB `SO_RCVBUF` and one transmit per burst instead of one per reply, and it answers
with the extra WebTransport settings so that the same clients reach it.

What differs between the two libraries is in `ENGINES`: qh3 addresses HTTP/3 datagrams
by flow id (session stream id // 4), its server leaves out ENABLE_CONNECT_PROTOCOL, and
qh3 2.1 fails its first flight against an aioquic client ("packet builder capacity
exhausted"), so the qh3 server's connections are aiowt's `_Qh3Quic`, the QuicConnection
subclass with the workaround (transport/engine_qh3.py): without it the bench's aioquic
client could not reach a raw qh3 server. aiowt's qh3 engine runs the same class, so the
workaround's cost is on both sides of the ratio.

Run it as `python -m bench.raw_server [--engine qh3] --port 0 --cert C --key K`; it prints
`READY <port>` on stdout once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import signal
import socket
from dataclasses import dataclass, field
from typing import Any

RECEIVE_BUFFER = 4 * 1024 * 1024
_EXTRA_SETTINGS = {0xC671706A: 64, 0x14E9CD29: 64, 0x2C7CF000: 1}
_ENABLE_CONNECT_PROTOCOL = 0x8


@dataclass(frozen=True)
class Engine:
    """One aioquic-shaped library and the ways the raw server must treat it."""

    package: str
    settings: dict[int, int] = field(default_factory=dict)
    """Settings added to `_EXTRA_SETTINGS`."""
    flow_ids: bool = False
    """HTTP/3 datagrams carry and take the flow id, not the session's stream id."""
    connection: str = ""
    """`module:Class` of the QuicConnection the server makes, if not the library's own."""


ENGINES = {
    "aioquic": Engine("aioquic"),
    "qh3": Engine(
        "qh3",
        settings={_ENABLE_CONNECT_PROTOCOL: 1},
        flow_ids=True,
        connection="aiowt.transport.engine_qh3:_Qh3Quic",
    ),
}


def _protocol_class(engine: Engine) -> type[Any]:
    """The echo protocol on `engine`'s library (imported here, so one process loads one)."""
    lib = engine.package
    protocol_base: Any = importlib.import_module(f"{lib}.asyncio.protocol").QuicConnectionProtocol
    h3 = importlib.import_module(f"{lib}.h3.connection")
    ev = importlib.import_module(f"{lib}.h3.events")
    stream_is_unidirectional = importlib.import_module(f"{lib}.quic.connection").__dict__[
        "stream_is_unidirectional"
    ]
    protocol_negotiated = importlib.import_module(f"{lib}.quic.events").ProtocolNegotiated
    h3_alpn = h3.H3_ALPN
    datagram, data, headers, wt_data = (
        ev.DatagramReceived,
        ev.DataReceived,
        ev.HeadersReceived,
        ev.WebTransportStreamDataReceived,
    )
    settings = {**_EXTRA_SETTINGS, **engine.settings}
    flow_ids = engine.flow_ids

    class H3(h3.H3Connection):  # type: ignore[misc, name-defined]
        def _get_local_settings(self) -> dict[int, int]:
            local: dict[int, int] = super()._get_local_settings()
            local.update(settings)
            return local

    class RawEchoProtocol(protocol_base):  # type: ignore[misc]
        """One QUIC connection: HTTP/3, WebTransport sessions, echo."""

        def __init__(self, quic: Any, stream_handler: Any = None) -> None:
            super().__init__(quic, stream_handler)
            self._h3: Any = None
            self._sessions: set[int] = set()

        def datagram_received(self, data: bytes | str, addr: Any) -> None:
            # One transmit per loop iteration rather than one per UDP packet: a burst of
            # packets read in one iteration shares the outgoing packets.
            self._quic.receive_datagram(data, addr, now=self._loop.time())
            self._process_events()
            self._transmit_soon()

        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, protocol_negotiated):
                if event.alpn_protocol in h3_alpn:
                    self._h3 = H3(self._quic, enable_webtransport=True)
                return
            if self._h3 is None:
                return
            for h3_event in self._h3.handle_event(event):
                self._h3_event(h3_event)

        def _h3_event(self, event: Any) -> None:
            if isinstance(event, datagram):
                session = event.flow_id * 4 if flow_ids else event.stream_id
                if session in self._sessions:
                    self._h3.send_datagram(event.flow_id if flow_ids else session, event.data)
            elif isinstance(event, wt_data):
                if not stream_is_unidirectional(event.stream_id):
                    self._quic.send_stream_data(event.stream_id, event.data, event.stream_ended)
                    if event.stream_ended:
                        # Both directions ended: drop HTTP/3's per-stream state (it leaks).
                        self._h3._stream.pop(event.stream_id, None)
            elif isinstance(event, headers):
                if event.stream_id in self._sessions:
                    return
                fields = dict(event.headers)
                if fields.get(b":method") == b"CONNECT" and fields.get(b":protocol") in (
                    b"webtransport",
                    b"webtransport-h3",
                ):
                    self._sessions.add(event.stream_id)
                    self._h3.send_headers(
                        event.stream_id,
                        [(b":status", b"200"), (b"sec-webtransport-http3-draft", b"draft02")],
                    )
                else:
                    self._h3.send_headers(event.stream_id, [(b":status", b"400")], end_stream=True)
            elif (
                isinstance(event, data) and event.stream_ended and event.stream_id in self._sessions
            ):
                # Capsules on the CONNECT stream are ignored; its end (FIN) ends the session.
                self._sessions.discard(event.stream_id)
                with contextlib.suppress(Exception):
                    self._h3.send_data(event.stream_id, b"", end_stream=True)

    return RawEchoProtocol


def _socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


async def serve(host: str, port: int, cert: str, key: str, engine: str = "aioquic") -> None:
    spec = ENGINES[engine]
    protocol = _protocol_class(spec)
    server_module = importlib.import_module(f"{spec.package}.asyncio.server")
    if spec.connection:
        # The library's QuicServer makes each connection by this module-level name; this
        # process runs one server, so pointing the name at the subclass is enough.
        module_name, _, class_name = spec.connection.partition(":")
        connection = getattr(importlib.import_module(module_name), class_name)
        server_module.QuicConnection = connection  # type: ignore[attr-defined]
    h3 = importlib.import_module(f"{spec.package}.h3.connection")
    config_module = importlib.import_module(f"{spec.package}.quic.configuration")
    configuration = config_module.QuicConfiguration(
        alpn_protocols=list(h3.H3_ALPN),
        is_client=False,
        max_datagram_frame_size=65536,
        idle_timeout=30.0,
    )
    configuration.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        functools.partial(
            server_module.QuicServer, configuration=configuration, create_protocol=protocol
        ),
        sock=_socket(host, port),
    )
    print(f"READY {transport.get_extra_info('sockname')[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="raw WebTransport echo server")
    parser.add_argument("--engine", choices=sorted(ENGINES), default="aioquic")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.cert, args.key, args.engine))


if __name__ == "__main__":
    main()
