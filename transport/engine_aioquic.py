"""The aioquic engine (the default): every aioquic internal aiowt relies on lives here.

aioquic has no public answer for a stream's unsent bytes, whether what was sent on a
stream is acknowledged, the outbound datagram queue, the largest datagram that fits a
packet, or the peer's certificate; its `QuicConnection` holds them in private
attributes, read below and nowhere else.
"""

from __future__ import annotations

from typing import Any

from aioquic._buffer import Buffer
from aioquic.h3 import events as h3_events
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.connection import ProtocolError as H3ProtocolError
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import encode_quic_version_negotiation, pull_quic_header
from cryptography.hazmat.primitives.serialization import Encoding

from ._h3_adapter import H3Adapter, H3Engine, Library, varint_size, with_wt_settings
from .tls import load_into

__all__ = ["ENGINE", "AioquicConnection"]

# A short-header packet spends 1 byte of flags, the peer's connection id, a 2-byte packet
# number (aioquic's fixed size) and a 16-byte AEAD tag; a DATAGRAM frame adds its type and
# a 2-byte length. Measured: 1169 payload bytes fit a 1200-byte packet with 8-byte ids.
_PACKET_FIXED_OVERHEAD = 1 + 2 + 16 + 1 + 2


def _peek(data: bytes, cid_length: int) -> tuple[int | None, int, bytes, bytes]:
    header = pull_quic_header(Buffer(data=data), host_cid_length=cid_length)
    return header.version, header.packet_type.value, header.destination_cid, header.source_cid


class AioquicConnection(H3Adapter):
    library = Library(
        name="aioquic",
        quic_connection=QuicConnection,
        configuration=QuicConfiguration,
        h3_connection=with_wt_settings(H3Connection),
        load_certificate=load_into,
        peek=_peek,
        version_negotiation=encode_quic_version_negotiation,
        h3_alpn=tuple(H3_ALPN),
        quic_events=quic_events,
        h3_events=h3_events,
        stream_gone=(RuntimeError, ValueError, H3ProtocolError),
    )
    _quic: QuicConnection

    def _datagram_session(self, event: Any) -> int:
        session_id: int = event.stream_id
        return session_id

    def send_wt_datagram(self, session_id: int, data: bytes) -> None:
        self._h3.send_datagram(session_id, data)

    def _can_receive(self, stream_id: int) -> bool:
        return self._quic._stream_can_receive(stream_id)

    def send_buffer_size(self, stream_id: int) -> int:
        stream = self._quic._streams.get(stream_id)
        return 0 if stream is None else len(stream.sender._buffer)

    def stream_delivered(self, stream_id: int) -> bool:
        stream = self._quic._streams.get(stream_id)
        return stream is None or stream.sender.is_finished

    def max_datagram_payload(self, session_id: int) -> int:
        quic = self._quic
        remote = quic._remote_max_datagram_frame_size or 0
        peer_cid = getattr(quic, "_peer_cid", None)
        cid_length = len(peer_cid.cid) if peer_cid is not None else 20
        packet = quic._max_datagram_size - _PACKET_FIXED_OVERHEAD - cid_length
        prefix = varint_size(session_id // 4)
        return max(0, min(remote, packet) - prefix)

    def pending_datagrams(self) -> int:
        return len(self._quic._datagrams_pending)

    def peer_certificate_der(self) -> bytes | None:
        tls = self._quic.tls
        certificate = tls._peer_certificate if tls is not None else None
        return None if certificate is None else certificate.public_bytes(Encoding.DER)


ENGINE = H3Engine(AioquicConnection)
