"""The aioquic engine (the default): every aioquic internal aiowt relies on lives here.

aioquic has no public answer for a stream's unsent bytes, whether what was sent on a
stream is acknowledged, the outbound datagram queue, the largest datagram that fits a
packet, or the peer's certificate; its `QuicConnection` holds them in private
attributes, read below and nowhere else.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from aioquic._buffer import Buffer
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.connection import ProtocolError as H3ProtocolError
from aioquic.h3.events import (
    DatagramReceived,
    DataReceived,
    HeadersReceived,
    WebTransportStreamDataReceived,
)
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    HandshakeCompleted,
    ProtocolNegotiated,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from cryptography.hazmat.primitives.serialization import Encoding

from ._h3_adapter import H3Adapter, _Library, varint_size, wt_settings
from .engine import QuicOptions
from .tls import load_into

__all__ = ["ENGINE", "AioquicConnection", "configuration"]

# A short-header packet spends 1 byte of flags, the peer's connection id, a 2-byte packet
# number (aioquic's fixed size) and a 16-byte AEAD tag; a DATAGRAM frame adds its type and
# a 2-byte length. Measured: 1169 payload bytes fit a 1200-byte packet with 8-byte ids.
_PACKET_FIXED_OVERHEAD = 1 + 2 + 16 + 1 + 2


def configuration(options: QuicOptions) -> QuicConfiguration:
    """aioquic's configuration for `options` (datagrams on, certificates loaded)."""
    config = QuicConfiguration(
        alpn_protocols=H3_ALPN,
        is_client=options.is_client,
        max_datagram_frame_size=options.max_datagram_frame_size,
        idle_timeout=options.idle_timeout,
        server_name=options.server_name,
    )
    if options.cert_pem is not None and options.key_pem is not None:
        load_into(config, options.cert_pem, options.key_pem)
    if not options.verify:
        config.verify_mode = ssl.CERT_NONE
    elif options.ca_file is not None:
        config.load_verify_locations(cafile=options.ca_file)
    return config


class _H3(H3Connection):
    """aioquic's HTTP/3 connection with the later drafts' WebTransport settings too."""

    def __init__(self, quic: QuicConnection, max_sessions: int) -> None:
        self._max_sessions = max_sessions  # read by the settings sent from super().__init__
        super().__init__(quic, enable_webtransport=True)

    def _get_local_settings(self) -> dict[int, int]:
        settings = super()._get_local_settings()
        settings.update(wt_settings(self._max_sessions))
        return settings


class AioquicConnection(H3Adapter):
    name = "aioquic"
    library = _Library(
        h3_alpn=tuple(H3_ALPN),
        stream_gone=(RuntimeError, ValueError, H3ProtocolError),
        cannot_encode=(),
        closing=(),
        protocol_negotiated=ProtocolNegotiated,
        handshake_completed=HandshakeCompleted,
        connection_terminated=ConnectionTerminated,
        cid_issued=ConnectionIdIssued,
        cid_retired=ConnectionIdRetired,
        stream_data=StreamDataReceived,
        stream_reset=StreamReset,
        stop_sending=StopSendingReceived,
        h3_headers=HeadersReceived,
        h3_data=DataReceived,
        h3_datagram=DatagramReceived,
        h3_wt_stream_data=WebTransportStreamDataReceived,
    )
    _quic: QuicConnection

    def _make_h3(self) -> H3Connection:
        return _H3(self._quic, self._max_sessions)

    def _drop_h3_state(self, stream_id: int) -> None:
        self._h3._stream.pop(stream_id, None)

    def _datagram_session(self, event: Any) -> int:
        session_id: int = event.stream_id
        return session_id

    def send_wt_datagram(self, session_id: int, data: bytes) -> None:
        self._h3.send_datagram(session_id, data)

    def _can_send(self, stream_id: int) -> bool:
        return self._quic._stream_can_send(stream_id)

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


@dataclass(frozen=True)
class _ServerConfig:
    quic: QuicConfiguration
    max_sessions: int


class AioquicEngine:
    name = "aioquic"

    def client(self, options: QuicOptions) -> AioquicConnection:
        quic = QuicConnection(configuration=configuration(options))
        return AioquicConnection(quic, options.max_sessions)

    def server_config(self, options: QuicOptions) -> _ServerConfig:
        return _ServerConfig(configuration(options), options.max_sessions)

    def server(self, config: object, original_destination_connection_id: bytes) -> Any:
        assert isinstance(config, _ServerConfig)
        quic = QuicConnection(
            configuration=config.quic,
            original_destination_connection_id=original_destination_connection_id,
        )
        return AioquicConnection(quic, config.max_sessions)

    def route(self, data: bytes, config: object) -> tuple[bytes, bool, bytes | None]:
        assert isinstance(config, _ServerConfig)
        versions = config.quic.supported_versions
        header = pull_quic_header(
            Buffer(data=data), host_cid_length=config.quic.connection_id_length
        )
        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in versions
        ):
            reply = encode_quic_version_negotiation(
                source_cid=header.destination_cid,
                destination_cid=header.source_cid,
                supported_versions=versions,
            )
            return header.destination_cid, False, reply
        initial = header.packet_type == QuicPacketType.INITIAL and len(data) >= 1200
        return header.destination_cid, initial, None


ENGINE = AioquicEngine()
