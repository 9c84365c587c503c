"""Capsules on the CONNECT stream, and the WebTransport error-code mapping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiowt.transport.capsule import (
    Capsule,
    CapsuleDecoder,
    CloseSession,
    DrainSession,
    encode_close,
    encode_drain,
)
from aiowt.transport.connection import app_to_h3_code, h3_to_app_code
from aiowt.transport.errors import PeerError


@given(code=st.integers(0, 2**32 - 1), reason=st.text(max_size=300), cut=st.integers(0, 2000))
def test_close_capsule_round_trips_in_any_split(code: int, reason: str, cut: int) -> None:
    wire = encode_drain() + encode_close(code, reason)
    decoder = CapsuleDecoder()
    cut = min(cut, len(wire))
    capsules = decoder.feed(wire[:cut]) + decoder.feed(wire[cut:])
    expected_reason = reason.encode()[:1024].decode("utf-8", "ignore")
    assert capsules == [DrainSession(), CloseSession(code, expected_reason)]
    assert decoder.pending == 0


def test_unknown_capsules_pass_through() -> None:
    assert CapsuleDecoder().feed(b"\x21\x02ab") == [Capsule(0x21, b"ab")]


@pytest.mark.parametrize(
    "wire",
    [
        b"\x80\x00\x28\x43\x02ab",  # close capsule shorter than its 4-byte code
        b"\x80\x00\x28\x43\x05\x00\x00\x00\x00\xff",  # reason not UTF-8
        b"\x21\x80\x01\x00\x00",  # announces 64 KiB: larger than any capsule we accept
    ],
)
def test_malformed_capsules_are_peer_errors(wire: bytes) -> None:
    with pytest.raises(PeerError):
        CapsuleDecoder().feed(wire)


@given(code=st.integers(0, 2**32 - 1))
def test_error_codes_map_into_the_http3_space_and_back(code: int) -> None:
    h3 = app_to_h3_code(code)
    assert 0x52E4A40FA8DB <= h3 <= 0x52E5AC983162
    assert (h3 - 0x21) % 0x1F != 0  # never a reserved (GREASE) codepoint
    assert h3_to_app_code(h3) == code


def test_codes_outside_the_webtransport_range_map_to_zero() -> None:
    assert h3_to_app_code(0x100) == 0
