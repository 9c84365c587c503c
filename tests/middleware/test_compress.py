"""Compress: negotiation, gzip and deflate messages end to end, and the decompression limit."""

from __future__ import annotations

import contextlib
import os
import zlib
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiowt import Server
from aiowt.actors import Handler
from aiowt.middleware.compress import (
    COMPRESSOR,
    DEFLATE_EXT,
    GZIP_EXT,
    IDENTITY,
    Compress,
    Compressor,
)
from aiowt.transport import (
    CloseCode,
    FrameTooLarge,
    HandshakeError,
    MalformedFrame,
    Stream,
    UsageError,
)
from tests.conftest import ClientFactory, ServerFactory, bounded

BIG = {"text": "all work and no play " * 500, "n": list(range(100))}


# --- the codec ---------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["gzip", "deflate"])
def test_wrap_unwrap_round_trip(codec: str) -> None:
    compressor = Compressor(codec)
    wrapped = compressor.wrap(BIG)
    assert isinstance(wrapped, msgpack.ExtType)
    assert wrapped.code == (GZIP_EXT if codec == "gzip" else DEFLATE_EXT)
    assert len(msgpack.packb(wrapped)) < len(msgpack.packb(BIG)) // 10
    # What the wire carries decodes back to the same object.
    on_the_wire = msgpack.unpackb(msgpack.packb(wrapped))
    assert compressor.unwrap(on_the_wire) == BIG


def test_the_formats_are_the_standard_ones() -> None:
    body = msgpack.packb(BIG)
    assert zlib.decompress(Compressor("gzip").compress(body), 16 + 15) == body  # RFC 1952
    assert zlib.decompress(Compressor("deflate").compress(body)) == body  # RFC 1950


def test_small_or_incompressible_messages_stay_plain() -> None:
    compressor = Compressor("gzip", min_size=64)
    assert compressor.wrap({"hi": 1}) == {"hi": 1}
    noise = os.urandom(4000)
    assert compressor.wrap(noise) == noise
    assert compressor.unwrap({"hi": 1}) == {"hi": 1}


@pytest.mark.parametrize("codec", ["gzip", "deflate"])
def test_a_compression_bomb_is_a_clear_error_not_memory_exhaustion(codec: str) -> None:
    bomb_body = b"\x00" * (64 * 1024 * 1024)  # 64 MiB of zeros ...
    bomb = Compressor(codec, level=9).compress(bomb_body)
    assert len(bomb) < 100 * 1024  # ... in under 100 KiB
    guard = Compressor(codec, max_size=1024 * 1024)
    with pytest.raises(FrameTooLarge, match="more than 1048576 bytes"):
        guard.decompress(bomb)
    with pytest.raises(FrameTooLarge):
        guard.unwrap(msgpack.ExtType(guard.wrap(BIG).code, bomb))


def test_exactly_at_the_limit_is_fine() -> None:
    data = b"a" * 1000
    assert Compressor("gzip", max_size=1000).decompress(Compressor("gzip").compress(data)) == data
    with pytest.raises(FrameTooLarge):
        Compressor("gzip", max_size=999).decompress(Compressor("gzip").compress(data))


def test_corrupt_truncated_trailing_and_foreign_data_are_malformed() -> None:
    gzip = Compressor("gzip")
    packed = gzip.compress(b"hello" * 100)
    for bad in (b"not gzip at all", packed[:-5], packed + b"extra", packed + packed):
        with pytest.raises(MalformedFrame):
            gzip.decompress(bad)
    deflated = Compressor("deflate").wrap(BIG)
    with pytest.raises(MalformedFrame, match="another codec"):
        gzip.unwrap(deflated)
    # A user's own extension types pass through untouched.
    assert gzip.unwrap(msgpack.ExtType(5, b"x")) == msgpack.ExtType(5, b"x")


@given(st.binary(max_size=5000), st.sampled_from(["gzip", "deflate"]))
def test_bytes_round_trip(data: bytes, codec: str) -> None:
    compressor = Compressor(codec, max_size=5000)
    assert compressor.decompress(compressor.compress(data)) == data


@given(st.binary(max_size=300))
def test_decompressing_garbage_only_ever_raises_peer_errors(data: bytes) -> None:
    for codec in ("gzip", "deflate"):
        with contextlib.suppress(MalformedFrame, FrameTooLarge):
            Compressor(codec, max_size=1000).decompress(data)


def test_identity_passes_everything_through() -> None:
    ext = msgpack.ExtType(GZIP_EXT, b"whatever")
    assert IDENTITY.wrap(BIG) is BIG
    assert IDENTITY.unwrap(ext) is ext
    assert IDENTITY.compress(b"x") == b"x" == IDENTITY.decompress(b"x")
    assert IDENTITY.name == "identity"


@pytest.mark.parametrize(
    "options",
    [
        {"codec": "brotli"},
        {"codec": "gzip", "level": 10},
        {"codec": "gzip", "max_size": 0},
        {"codec": "gzip", "min_size": -1},
    ],
)
def test_compressor_validates(options: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        Compressor(**options)


def test_compress_validates_and_has_a_repr() -> None:
    with pytest.raises(UsageError):
        Compress("zstd")
    with pytest.raises(UsageError):
        Compress(())
    assert repr(Compress()) == (
        "Compress('gzip', level=6, min_size=256, max_size=1048576, required=False)"
    )
    assert "('gzip', 'deflate')" in repr(Compress(("gzip", "deflate")))


# --- end to end --------------------------------------------------------------------------------


class CompressedEcho(Handler):
    """Echoes each message, decompressed and compressed again, on the same stream."""

    async def on_message(self, message: Any, stream: Stream | None) -> None:
        codec = self.ctx.get(COMPRESSOR)
        plain = codec.unwrap(message)
        reply = {"codec": codec.name, "echo": plain}
        if stream is None:
            self.send_datagram_message(codec.wrap(reply))
        else:
            stream.send_message(codec.wrap(reply))


def routes(server: Server) -> None:
    server.route("/z", CompressedEcho, Compress(("gzip", "deflate")))
    server.route("/must", CompressedEcho, Compress("deflate", required=True))


async def round_trip(session: Any, codec: Compressor, message: Any) -> Any:
    stream = session.open_stream()
    stream.send_message(codec.wrap(message))
    async with bounded():
        return await stream.receive_message()


@pytest.mark.parametrize(
    ("offer", "expected"),
    [
        ({"path": "/z?compress=gzip"}, "gzip"),
        ({"path": "/z", "headers": [("wt-compress", "br, deflate")]}, "deflate"),
        ({"path": "/z?compress=deflate,gzip"}, "gzip"),  # the server's preference wins
    ],
)
async def test_negotiated_codec_compresses_both_ways(
    make_server: ServerFactory, client: ClientFactory, offer: dict[str, Any], expected: str
) -> None:
    server = await make_server(routes)
    path = offer.pop("path")
    session = await client(server, path, **offer)
    assert session.request.header("wt-compress") == expected
    codec = Compressor(expected)
    raw = await round_trip(session, codec, BIG)
    assert isinstance(raw, msgpack.ExtType)  # the reply came compressed
    assert codec.unwrap(raw) == {"codec": expected, "echo": BIG}
    plain_size = len(msgpack.packb(BIG))
    assert session.bytes_out < plain_size // 5  # what the client sent was compressed


async def test_without_an_offer_the_session_is_plain(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    server = await make_server(routes)
    session = await client(server, "/z")
    assert session.request.header("wt-compress") is None
    assert await round_trip(session, IDENTITY, BIG) == {"codec": "identity", "echo": BIG}


async def test_required_compression_refuses_a_client_without_an_offer(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    server = await make_server(routes)
    with pytest.raises(HandshakeError) as caught:
        await client(server, "/must?compress=gzip")
    assert caught.value.status == 400
    assert "deflate" in caught.value.reason
    session = await client(server, "/must?compress=deflate")
    assert session.request.header("wt-compress") == "deflate"


async def test_a_bomb_from_the_peer_closes_its_session_with_message_too_large(
    make_server: ServerFactory, client: ClientFactory
) -> None:
    server = await make_server(routes)
    session = await client(server, "/z?compress=gzip")
    bomb = Compressor("gzip", level=9).compress(msgpack.packb(b"\x00" * (32 * 1024 * 1024)))
    session.open_stream().send_message(msgpack.ExtType(GZIP_EXT, bomb))
    async with bounded():
        info = await session.wait_closed()
    assert info.code == CloseCode.MESSAGE_TOO_LARGE
    assert "decompresses to more than" in info.reason
