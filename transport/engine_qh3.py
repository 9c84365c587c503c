"""The qh3 engine (`pip install 'aiowt[qh3]'`): aioquic's API on a Rust QUIC core.

qh3 keeps aioquic's sans-I/O `QuicConnection` and HTTP/3 layer, so `H3Adapter` serves
both; what differs lives here. Its HTTP/3 datagrams carry the quarter stream id (the
flow id); its server does not advertise ENABLE_CONNECT_PROTOCOL (added with the other
WebTransport settings); a stream's unsent bytes are public (`get_send_buffer_size`),
but acknowledgements, the outbound datagram queue and the peer's connection-id length
are not, so those answers are conservative.

One workaround for qh3 2.1 as a server facing an aioquic client (docs/engines.md):
aioquic pads its Initial datagram with zero bytes after the packet; qh3 credits only the
packet's bytes to the anti-amplification allowance and then fails its first flight with
"packet builder capacity exhausted". `_Qh3Quic` hands the padding to the core with the
packet it follows, and treats that error as "blocked until the client sends more".
Not worked around, because it lives in the Rust core: a client whose connection ids are
empty (Chromium's) is answered to the wrong connection id, so qh3 cannot serve browsers
yet (docs/engines.md).
"""

from __future__ import annotations

import contextlib
from typing import Any

from qh3._hazmat import pull_quic_header
from qh3.h3 import events as h3_events
from qh3.h3.connection import H3_ALPN, H3Connection, QpackEncoderStreamError
from qh3.h3.connection import ProtocolError as H3ProtocolError
from qh3.quic import events as quic_events
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection, QuicConnectionError
from qh3.quic.packet import encode_quic_version_negotiation

from ._h3_adapter import H3Adapter, H3Engine, Library, varint_size, with_wt_settings
from .engine import Address
from .errors import WriteBufferFull

__all__ = ["ENGINE", "Qh3Connection"]

# Flags, the longest packet number, the AEAD tag, and the DATAGRAM frame's type and
# 2-byte length; then the peer's connection id.
_PACKET_OVERHEAD = 1 + 4 + 16 + 1 + 2
_LONGEST_CID = 20
_CAPACITY_EXHAUSTED = "capacity exhausted"


def _load_certificate(config: QuicConfiguration, cert_pem: bytes, key_pem: bytes) -> None:
    config.load_cert_chain(cert_pem, key_pem)


def _peek(data: bytes, cid_length: int) -> tuple[int | None, int, bytes, bytes]:
    version, packet_type, _, destination, source, *_ = pull_quic_header(data, 0, cid_length)
    return version, packet_type, destination, source


class _Qh3Quic(QuicConnection):
    """qh3's connection with the aioquic-client workarounds (see the module's doc)."""

    _receiving: list[Any] | None = None

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        self._receiving = [bytes(data), 0]
        try:
            super().receive_datagram(data, addr, now)
        finally:
            self._receiving = None

    def _call_core(self, operation: Any, *args: Any) -> Any:
        receiving = self._receiving
        if receiving is not None and getattr(operation, "__name__", "") == "receive_datagram":
            data, offset = receiving
            if offset == -1:
                return (0, 0, 0, 0, 0, 0)  # the zero tail went in with the packet before it
            end = offset + len(args[0])
            if end < len(data) and not any(data[end:]):
                args = (data[offset:], *args[1:])
                receiving[1] = -1
            else:
                receiving[1] = end
        return super()._call_core(operation, *args)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        if self._core is None:
            return []
        datagrams = []
        while True:
            try:
                transmit = self._call_core(self._core.poll_transmit, now)
            except QuicConnectionError as exc:
                if _CAPACITY_EXHAUSTED not in exc.reason_phrase:
                    raise
                break  # what was built stays valid; the rest waits for the peer's bytes
            if transmit is None:
                break
            datagrams.append((transmit[0], transmit[1]))
        return datagrams


class Qh3Connection(H3Adapter):
    library = Library(
        name="qh3",
        quic_connection=_Qh3Quic,
        configuration=QuicConfiguration,
        h3_connection=with_wt_settings(H3Connection),
        load_certificate=_load_certificate,
        peek=_peek,
        version_negotiation=encode_quic_version_negotiation,
        h3_alpn=tuple(H3_ALPN),
        quic_events=quic_events,
        h3_events=h3_events,
        stream_gone=(
            RuntimeError,
            ValueError,
            AssertionError,
            H3ProtocolError,
            QuicConnectionError,
        ),
        cannot_encode=(QpackEncoderStreamError,),
        closing=(QuicConnectionError,),
    )

    def __init__(self, quic: Any, max_sessions: int) -> None:
        super().__init__(quic, max_sessions)
        self._unsent_datagrams = 0

    def _datagram_session(self, event: Any) -> int:
        return int(event.flow_id) * 4

    def send_wt_datagram(self, session_id: int, data: bytes) -> None:
        with contextlib.suppress(*self.library.closing):
            self._h3.send_datagram(session_id // 4, data)
            self._unsent_datagrams += 1

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        datagrams = super().datagrams_to_send(now)
        core = self._quic._core
        # qh3 does not say how many datagrams wait: all went out unless congestion held
        # some back.
        if core is None or core.bytes_in_flight < core.congestion_window:
            self._unsent_datagrams = 0
        return datagrams

    def open_wt_stream(self, session_id: int, unidirectional: bool) -> int:
        try:
            return super().open_wt_stream(session_id, unidirectional)
        except ValueError as exc:
            if "stream limit" not in str(exc):
                raise
            # aioquic queues such a stream until the peer allows more; qh3 refuses it.
            raise WriteBufferFull(
                f"the peer allows no more streams for now (its MAX_STREAMS): {exc}"
            ) from exc

    def _can_receive(self, stream_id: int) -> bool:
        return True  # qh3 does not say; a stop on a finished stream raises, and is ignored

    def send_buffer_size(self, stream_id: int) -> int:
        if self._quic._core is None:
            return 0
        return int(self._quic.get_send_buffer_size(stream_id))

    def stream_delivered(self, stream_id: int) -> bool:
        core = self._quic._core
        if core is None or self._quic._close_event is not None:
            return True
        # No per-stream acknowledgement state: nothing of it unsent and nothing in flight.
        return bool(self._quic.get_send_buffer_size(stream_id) == 0 and core.bytes_in_flight == 0)

    def max_datagram_payload(self, session_id: int) -> int:
        quic = self._quic
        remote = quic._remote_max_datagram_frame_size or 0
        # The peer's connection id as it first gave it (Chromium's is empty).
        known = getattr(quic._tls, "remote_initial_source_connection_id", None)
        cid_length = _LONGEST_CID if known is None else len(known)
        packet = quic.configuration.max_datagram_size - _PACKET_OVERHEAD - cid_length
        prefix = varint_size(session_id // 4)
        # The peer's limit counts the DATAGRAM frame's type and length too.
        return max(0, min(int(remote) - 3, int(packet)) - prefix)

    def pending_datagrams(self) -> int:
        return self._unsent_datagrams

    def peer_certificate_der(self) -> bytes | None:
        certificate = self._quic.get_peercert()
        return None if certificate is None else bytes(certificate.public_bytes())


ENGINE = H3Engine(Qh3Connection)
