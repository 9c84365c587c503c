"""The ceiling: a WebTransport echo server on raw aioquic, with no aiowt code at all.

It serves any path: a CONNECT is answered 200, every datagram is sent back, the bytes of
every client-opened bidirectional stream are written back on the same stream (FIN for
FIN), and a FIN or close capsule on the CONNECT stream is answered with a FIN. It
applies the same fair tunings aiowt uses (see ../shared/aioquic-notes.md): a 4 MiB
`SO_RCVBUF` and one transmit per burst instead of one per reply, and it answers with
the extra WebTransport settings so that the same clients reach it.

Run it as `python -m bench.raw_server --port 0 --cert C --key K`; it prints
`READY <port>` on stdout once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import signal
import socket
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import (
    DatagramReceived,
    DataReceived,
    H3Event,
    HeadersReceived,
    WebTransportStreamDataReceived,
)
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, stream_is_unidirectional
from aioquic.quic.events import ProtocolNegotiated, QuicEvent

RECEIVE_BUFFER = 4 * 1024 * 1024
_EXTRA_SETTINGS = {0xC671706A: 64, 0x14E9CD29: 64, 0x2C7CF000: 1}


class _H3(H3Connection):
    def _get_local_settings(self) -> dict[int, int]:
        settings = super()._get_local_settings()
        settings.update(_EXTRA_SETTINGS)
        return settings


class RawEchoProtocol(QuicConnectionProtocol):
    """One QUIC connection: HTTP/3, WebTransport sessions, echo."""

    def __init__(self, quic: QuicConnection, stream_handler: Any = None) -> None:
        super().__init__(quic, stream_handler)
        self._h3: H3Connection | None = None
        self._sessions: set[int] = set()

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        # One transmit per loop iteration rather than one per UDP packet: a burst of
        # packets read in one iteration shares the outgoing packets.
        self._quic.receive_datagram(data, addr, now=self._loop.time())  # type: ignore[arg-type]
        self._process_events()
        self._transmit_soon()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated):
            if event.alpn_protocol in H3_ALPN:
                self._h3 = _H3(self._quic, enable_webtransport=True)
            return
        if self._h3 is None:
            return
        for h3_event in self._h3.handle_event(event):
            self._h3_event(h3_event)

    def _h3_event(self, event: H3Event) -> None:
        assert self._h3 is not None
        if isinstance(event, DatagramReceived):
            if event.stream_id in self._sessions:
                self._h3.send_datagram(event.stream_id, event.data)
        elif isinstance(event, WebTransportStreamDataReceived):
            if not stream_is_unidirectional(event.stream_id):
                self._quic.send_stream_data(event.stream_id, event.data, event.stream_ended)
                if event.stream_ended:
                    # Both directions ended: drop HTTP/3's per-stream state (it leaks).
                    self._h3._stream.pop(event.stream_id, None)
        elif isinstance(event, HeadersReceived):
            if event.stream_id in self._sessions:
                return
            headers = dict(event.headers)
            if headers.get(b":method") == b"CONNECT" and headers.get(b":protocol") in (
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
            isinstance(event, DataReceived)
            and event.stream_ended
            and event.stream_id in self._sessions
        ):
            # Capsules on the CONNECT stream are ignored; its end (FIN) ends the session.
            self._sessions.discard(event.stream_id)
            with contextlib.suppress(Exception):
                self._h3.send_data(event.stream_id, b"", end_stream=True)


def _socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


async def serve(host: str, port: int, cert: str, key: str) -> None:
    configuration = QuicConfiguration(
        alpn_protocols=H3_ALPN,
        is_client=False,
        max_datagram_frame_size=65536,
        idle_timeout=30.0,
    )
    configuration.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        functools.partial(QuicServer, configuration=configuration, create_protocol=RawEchoProtocol),
        sock=_socket(host, port),
    )
    print(f"READY {transport.get_extra_info('sockname')[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="raw aioquic WebTransport echo server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.cert, args.key))


if __name__ == "__main__":
    main()
