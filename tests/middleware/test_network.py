"""Unit tests of the network and origin filters, one layer at a time, with a fake call_next."""

from __future__ import annotations

import asyncio
import ipaddress
import sys
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from aiowt.middleware.chain import Middleware
from aiowt.middleware.keys import CLIENT_IP
from aiowt.middleware.network import (
    CORS,
    BlockUserAgent,
    ClientIP,
    IPAllowList,
    IPBlockList,
    NetworkSet,
    RequireUserAgent,
    client_ip,
    parse_ip,
    parse_network,
)
from aiowt.transport.context import SessionContext
from aiowt.transport.errors import Rejected, UsageError
from aiowt.transport.request import ConnectRequest

ip = ipaddress.ip_address
net = ipaddress.ip_network


def make_ctx(headers: Sequence[tuple[str, str]] = (), *, peer: str = "127.0.0.1") -> SessionContext:
    return SessionContext(
        request=ConnectRequest(
            method="CONNECT",
            scheme="https",
            authority="localhost:4433",
            path="/chat",
            query_string="",
            protocol="webtransport",
            headers=tuple(headers),
            remote_addr=(peer, 50000),
        )
    )


async def admitted(mw: Middleware, ctx: SessionContext) -> SessionContext:
    calls: list[SessionContext] = []

    async def call_next(next_ctx: SessionContext) -> None:
        calls.append(next_ctx)

    await mw(ctx, call_next)
    assert calls == [ctx]
    return ctx


async def refused(mw: Middleware, ctx: SessionContext) -> Rejected:
    async def call_next(next_ctx: SessionContext) -> None:
        raise AssertionError("call_next ran for a refused session")

    with capture_logs() as logs, pytest.raises(Rejected) as caught:
        await mw(ctx, call_next)
    assert any(entry["event"].startswith("refused") for entry in logs)
    return caught.value


# --- addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.1.2.3", "10.1.2.3"),
        (" 10.1.2.3 ", "10.1.2.3"),
        ("10.1.2.3:8080", "10.1.2.3"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("unknown", None),
        ("", None),
        ("[2001:db8::1", None),
        ("[2001:db8::1]x", None),
        ("10.1.2", None),
    ],
)
def test_parse_ip(text: str, expected: str | None) -> None:
    assert parse_ip(text) == (None if expected is None else ip(expected))


def test_parse_network_masks_host_bits_and_unmaps_ipv4_in_ipv6() -> None:
    assert parse_network("10.1.2.3/8") == net("10.0.0.0/8")
    assert parse_network("::ffff:10.0.0.0/104") == net("10.0.0.0/8")
    assert parse_network("::ffff:10.0.0.1") == net("10.0.0.1/32")
    assert parse_network(ip("2001:db8::1")) == net("2001:db8::1/128")
    for bad in ("10.0.0.0/33", "nope", "", "1.2.3.4/x"):
        with pytest.raises(UsageError):
            parse_network(bad)


addresses = st.one_of(
    st.ip_addresses(v=4),
    st.ip_addresses(v=6),
    st.ip_addresses(v=4).map(lambda a: ip(f"::ffff:{a}")),
)
networks = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).flatmap(
    lambda a: st.integers(0, a.max_prefixlen).map(
        lambda p: ipaddress.ip_network((a, p), strict=False)
    )
)


@given(st.lists(networks, max_size=12), st.lists(addresses, max_size=12))
def test_network_set_membership_matches_a_linear_scan(nets: list[Any], ips: list[Any]) -> None:
    subject = NetworkSet(nets)
    for address in ips:
        unmapped = address.ipv4_mapped if getattr(address, "ipv4_mapped", None) else address
        expected = any(unmapped.version == n.version and unmapped in n for n in nets)
        assert (address in subject) == expected
    assert "10.0.0.1" not in subject  # only parsed addresses are members


def test_client_ip_prefers_the_resolved_key() -> None:
    ctx = make_ctx(peer="::ffff:127.0.0.1")
    assert client_ip(ctx) == ip("127.0.0.1")
    ctx.set(CLIENT_IP, ip("203.0.113.7"))
    assert client_ip(ctx) == ip("203.0.113.7")
    assert client_ip(make_ctx(peer="")) is None


# --- ClientIP -----------------------------------------------------------------------------


async def test_forwarded_for_from_an_untrusted_peer_is_ignored_and_logged() -> None:
    ctx = make_ctx([("x-forwarded-for", "10.9.9.9")], peer="198.51.100.4")
    with capture_logs() as logs:
        await admitted(ClientIP(), ctx)
    assert ctx.get(CLIENT_IP) == ip("198.51.100.4")
    assert logs[0]["event"] == "ignored forwarding header from an untrusted peer"
    trusting_others = ClientIP(["10.0.0.0/8"])
    ctx = make_ctx([("x-forwarded-for", "10.9.9.9")], peer="198.51.100.4")
    await admitted(trusting_others, ctx)
    assert ctx.get(CLIENT_IP) == ip("198.51.100.4")


@pytest.mark.parametrize(
    ("headers", "client"),
    [
        ([("x-forwarded-for", "203.0.113.9")], "203.0.113.9"),
        # A client-written prefix (even garbage) left of the real client is never read.
        ([("x-forwarded-for", "garbage, 1.1.1.1, 203.0.113.9, 10.0.0.2")], "203.0.113.9"),
        ([("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "203.0.113.9:4711")], "203.0.113.9"),
        ([("x-forwarded-for", "[2001:db8::9]:443, 10.0.0.5")], "2001:db8::9"),
        ([("x-forwarded-for", "10.0.0.7, 10.0.0.2")], "10.0.0.7"),  # all hops trusted
        ([("x-forwarded-for", "")], "10.0.0.1"),
        ([], "10.0.0.1"),
    ],
)
async def test_forwarded_for_from_a_trusted_proxy_is_walked_from_the_right(
    headers: list[tuple[str, str]], client: str
) -> None:
    ctx = await admitted(ClientIP(["10.0.0.0/8"]), make_ctx(headers, peer="10.0.0.1"))
    assert ctx.get(CLIENT_IP) == ip(client)


async def test_an_unreadable_hop_from_a_trusted_proxy_is_400() -> None:
    ctx = make_ctx([("x-forwarded-for", "203.0.113.9, not-an-ip")], peer="127.0.0.1")
    error = await refused(ClientIP(["127.0.0.1"]), ctx)
    assert (error.status, error.reason) == (400, "malformed x-forwarded-for")


async def test_client_ip_other_header_and_repr() -> None:
    mw = ClientIP(["127.0.0.1", "::1"], header="X-Real-IP")
    ctx = await admitted(mw, make_ctx([("x-real-ip", "192.0.2.1")]))
    assert ctx.get(CLIENT_IP) == ip("192.0.2.1")
    assert repr(mw) == "ClientIP(trusted_proxies=['127.0.0.1/32', '::1/128'], header='x-real-ip')"
    with pytest.raises(UsageError):
        ClientIP("127.0.0.1")


# --- allow and block lists ----------------------------------------------------------------


async def test_allow_list_admits_listed_ips_and_cidrs_v4_and_v6() -> None:
    mw = IPAllowList("10.0.0.0/8", "192.168.1.7", "2001:db8::/32")
    for peer in ("10.200.0.1", "192.168.1.7", "::ffff:10.0.0.1", "2001:db8:1::5"):
        await admitted(mw, make_ctx(peer=peer))
    for peer in ("192.168.1.8", "11.0.0.1", "2001:db9::1", "::1"):
        error = await refused(mw, make_ctx(peer=peer))
        assert (error.status, error.reason) == (403, "address not allowed")
    assert repr(mw) == "IPAllowList('10.0.0.0/8', '192.168.1.7/32', '2001:db8::/32')"
    with pytest.raises(UsageError):
        IPAllowList()


async def test_allow_list_uses_the_resolved_client_ip() -> None:
    ctx = make_ctx(peer="10.0.0.1")
    ctx.set(CLIENT_IP, ip("203.0.113.9"))
    assert (await refused(IPAllowList("10.0.0.0/8"), ctx)).status == 403


async def test_block_list_updates_take_effect_for_the_next_check() -> None:
    blocks = IPBlockList("192.0.2.0/24")
    assert (await refused(blocks, make_ctx(peer="192.0.2.55"))).reason == "address blocked"
    await admitted(blocks, make_ctx(peer="::ffff:10.1.2.3"))
    blocks.add("10.0.0.0/8", "2001:db8::/48")
    assert (await refused(blocks, make_ctx(peer="::ffff:10.1.2.3"))).status == 403
    assert (await refused(blocks, make_ctx(peer="2001:db8:0:1::1"))).status == 403
    assert blocks.remove("10.0.0.0/8") is True
    await admitted(blocks, make_ctx(peer="10.1.2.3"))
    assert blocks.remove("10.0.0.0/8") is False
    assert len(blocks) == 2
    assert repr(blocks) == "IPBlockList(<2 entries>)"


def test_block_list_removal_is_by_entry() -> None:
    blocks = IPBlockList("10.0.0.0/8", "10.1.2.3")
    assert blocks.remove("10.1.2.3")
    assert blocks.is_blocked("10.1.2.3")  # still inside the blocked CIDR
    assert blocks.remove("10.9.9.9/8")  # same network as 10.0.0.0/8
    assert not blocks.is_blocked("10.1.2.3")
    assert "not an ip" not in blocks
    blocks.add("::ffff:192.0.2.1")
    assert blocks.is_blocked(ip("192.0.2.1"))
    blocks.clear()
    assert blocks.networks == frozenset()


async def test_block_list_fails_closed_for_an_unreadable_peer() -> None:
    assert (await refused(IPBlockList(), make_ctx(peer="not-an-ip"))).status == 403


def test_block_list_is_safe_to_update_from_many_threads_while_read() -> None:
    blocks = IPBlockList()
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        probe = ip("10.0.0.1")
        try:
            while not stop.is_set():
                probe in blocks  # noqa: B015 - the read is the point
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def writer(n: int) -> None:
        for i in range(60):
            blocks.add(f"10.{n}.{i}.0/24")
        for i in range(0, 60, 2):
            blocks.remove(f"10.{n}.{i}.0/24")

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    # Switch threads as often as possible so a read-modify-write race would show.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in readers + writers:
            thread.start()
        for thread in writers:
            thread.join(timeout=20)
    finally:
        stop.set()
        sys.setswitchinterval(interval)
    for thread in readers:
        thread.join(timeout=5)
    assert not errors
    # No lost update: every odd /24 of every writer is still there, every even one gone.
    expected = {net(f"10.{n}.{i}.0/24") for n in range(4) for i in range(1, 60, 2)}
    assert blocks.networks == expected


async def test_block_list_can_be_updated_from_a_thread_while_the_loop_checks() -> None:
    blocks = IPBlockList()
    await admitted(blocks, make_ctx(peer="198.51.100.1"))
    await asyncio.to_thread(blocks.add, "198.51.100.0/24")
    assert (await refused(blocks, make_ctx(peer="198.51.100.1"))).status == 403


# --- user agent ---------------------------------------------------------------------------


async def test_block_user_agent() -> None:
    mw = BlockUserAgent("BadBot", "curl/")
    for agent in ("Mozilla/5.0 badbot/2", "curl/8.1"):
        error = await refused(mw, make_ctx([("user-agent", agent)]))
        assert (error.status, error.reason) == (403, "user agent blocked")
    await admitted(mw, make_ctx([("user-agent", "Mozilla/5.0")]))
    await admitted(mw, make_ctx())
    strict = BlockUserAgent("BadBot", case_sensitive=True)
    await admitted(strict, make_ctx([("user-agent", "badbot")]))
    assert repr(strict) == "BlockUserAgent('BadBot', case_sensitive=True)"
    with pytest.raises(UsageError):
        BlockUserAgent()
    with pytest.raises(UsageError):
        BlockUserAgent("")


async def test_require_user_agent() -> None:
    for headers in ([], [("user-agent", "")], [("user-agent", "   ")]):
        error = await refused(RequireUserAgent(), make_ctx(headers))
        assert (error.status, error.reason) == (403, "user agent required")
    await admitted(RequireUserAgent(), make_ctx([("user-agent", "app/1")]))


# --- CORS ---------------------------------------------------------------------------------


async def test_cors_exact_origins_case_insensitive() -> None:
    mw = CORS(["https://app.example.com", "http://localhost:8080"])
    for origin in ("https://app.example.com", "HTTPS://App.Example.com", "http://localhost:8080"):
        await admitted(mw, make_ctx([("origin", origin)]))
    for origin in (
        "https://evil.example.com",
        "http://app.example.com",
        "null",
        "http://localhost",
    ):
        error = await refused(mw, make_ctx([("origin", origin)]))
        assert (error.status, error.reason) == (403, "origin not allowed")


async def test_cors_star_admits_any_origin() -> None:
    mw = CORS(["*"])
    for origin in ("https://anything.example", "null"):
        await admitted(mw, make_ctx([("origin", origin)]))


async def test_cors_missing_origin_policy() -> None:
    await admitted(CORS(["https://a.example"]), make_ctx())
    error = await refused(CORS(["https://a.example"], allow_missing=False), make_ctx())
    assert (error.status, error.reason) == (403, "origin required")
    two = make_ctx([("origin", "https://a.example"), ("origin", "https://b.example")])
    assert (await refused(CORS(["*"]), two)).status == 400


async def test_cors_validator_widens_narrows_and_defers() -> None:
    async def previews(origin: str, ctx: SessionContext) -> bool | None:
        if origin.endswith(".preview.example.com"):
            return True  # widen: not in the list
        if origin == "https://banned.example.com":
            return False  # narrow: in the list, refused anyway
        return None  # defer to the list

    mw = CORS(["https://app.example.com", "https://banned.example.com"], validator=previews)
    await admitted(mw, make_ctx([("origin", "https://pr-7.preview.example.com")]))
    await admitted(mw, make_ctx([("origin", "https://app.example.com")]))
    assert (await refused(mw, make_ctx([("origin", "https://banned.example.com")]))).status == 403
    assert (await refused(mw, make_ctx([("origin", "https://other.example")]))).status == 403


async def test_cors_validator_alone_and_a_raising_validator_refuses() -> None:
    only = CORS(validator=lambda origin, ctx: origin == "https://x.example")
    await admitted(only, make_ctx([("origin", "https://x.example")]))
    assert (await refused(only, make_ctx([("origin", "https://y.example")]))).status == 403

    def broken(origin: str, ctx: SessionContext) -> bool:
        raise RuntimeError("lookup failed")

    assert (
        await refused(CORS(validator=broken), make_ctx([("origin", "https://x")]))
    ).status == 403


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"allowed_origins": "https://a.example"},
        {"allowed_origins": ["a.example"]},
        {"allowed_origins": ["https://a.example/path"]},
        {"allowed_origins": [42]},
        {"validator": "yes"},
    ],
)
def test_cors_options_are_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        CORS(**kwargs)


def test_cors_repr() -> None:
    assert repr(CORS(["https://A.example/"])) == (
        "CORS(['https://a.example'], validator=None, allow_missing=True)"
    )
