"""msgpack framing: round trips, and any input either decodes or raises the typed error."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiowt.transport.errors import FrameTooLarge, MalformedFrame, UsageError
from aiowt.transport.framing import FrameDecoder, decode_message, encode_frame, encode_message

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
    | st.binary(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


@given(messages=st.lists(values, max_size=10), cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_frames_survive_any_chunking(messages: list[Any], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(message) for message in messages)
    decoder = FrameDecoder()
    decoded: list[Any] = []
    start = 0
    for cut in [*sorted(min(cut, len(wire)) for cut in cuts), len(wire)]:
        decoded += decoder.feed(wire[start:cut])
        start = cut
    decoder.close()
    assert decoded == [_normalise(m) for m in messages]


def _normalise(value: Any) -> Any:
    # msgpack turns tuples into lists; our strategy makes lists already.
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False, strict_map_key=False)


@settings(max_examples=300)
@given(data=st.binary(max_size=200))
def test_any_bytes_either_decode_or_raise_the_typed_error(data: bytes) -> None:
    decoder = FrameDecoder(max_size=64)
    try:
        decoder.feed(data)
        decoder.close()
    except (MalformedFrame, FrameTooLarge):
        pass
    with contextlib.suppress(MalformedFrame, FrameTooLarge):
        decode_message(data, max_size=64)


def test_oversized_announcement_fails_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_size=100)
    with pytest.raises(FrameTooLarge):
        decoder.feed((101).to_bytes(4, "big"))


def test_truncated_frame_at_end_of_stream_is_malformed() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame("x")[:-1]) == []
    with pytest.raises(MalformedFrame):
        decoder.close()


def test_trailing_bytes_in_a_datagram_are_malformed() -> None:
    with pytest.raises(MalformedFrame):
        decode_message(encode_message(1) + b"\x01")


def test_unencodable_message_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        encode_message(object())
    with pytest.raises(UsageError):
        encode_frame("x" * 200, max_size=100)
