"""Network and origin filters on the CONNECT request.

`ClientIP` resolves the client's address (through trusted proxies only) into the
`CLIENT_IP` key; `IPAllowList` and `IPBlockList` filter on it (falling back to the
peer address); `BlockUserAgent` / `RequireUserAgent` filter on the user agent; `CORS`
checks the ``origin`` header. Refusals are 403 with a reason, and logged.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import NoReturn

import structlog

from aiowt.transport import ConnectRequest, Rejected, SessionContext, UsageError

from ._options import callable_name, check_callable, header_name, maybe_await
from .chain import CallNext
from .keys import CLIENT_IP, IPAddress

__all__ = [
    "CORS",
    "BlockUserAgent",
    "ClientIP",
    "IPAllowList",
    "IPBlockList",
    "IPNetwork",
    "NetworkSet",
    "OriginValidator",
    "RequireUserAgent",
    "client_ip",
    "parse_ip",
    "parse_network",
]

log = structlog.get_logger("aiowt.middleware.network")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
"""An IP network (a single address is a /32 or /128 network)."""

NetworkSpec = str | IPAddress | IPNetwork


def _refuse(ctx: SessionContext, status: int, reason: str, **details: object) -> NoReturn:
    log.info("refused: " + reason, status=status, **details, **ctx.ids)
    raise Rejected(status, reason)


# --- addresses and networks ---------------------------------------------------------------


def _unmap(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_ip(text: str) -> IPAddress | None:
    """`text` as an IP address (IPv4-mapped IPv6 unmapped), or ``None`` if it is not one.

    Also reads the forms proxies write into ``x-forwarded-for``: ``[v6]``,
    ``[v6]:port`` and ``v4:port``.
    """
    text = text.strip(" \t")
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (text[end + 1 :] and not text[end + 1 :].startswith(":")):
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    try:
        return _unmap(ipaddress.ip_address(text))
    except ValueError:
        return None


def parse_network(spec: NetworkSpec) -> IPNetwork:
    """An IP, a CIDR (host bits are masked), or an `ipaddress` object, as a network.

    IPv4-mapped IPv6 addresses and networks (``::ffff:10.0.0.0/104``) become the IPv4
    ones, because client addresses are unmapped before matching. Raises `UsageError`.
    """
    try:
        if isinstance(spec, ipaddress.IPv4Network | ipaddress.IPv6Network):
            network: IPNetwork = spec
        elif isinstance(spec, ipaddress.IPv4Address | ipaddress.IPv6Address):
            network = ipaddress.ip_network(_unmap(spec))
        elif isinstance(spec, str):
            network = ipaddress.ip_network(spec.strip(), strict=False)
        else:
            raise UsageError(f"not an IP address or CIDR: {spec!r}")
    except ValueError:
        raise UsageError(f"not an IP address or CIDR: {spec!r}") from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


class NetworkSet:
    """An immutable set of IP networks with a membership test that does not scan them.

    Networks are grouped by (version, prefix length); ``ip in s`` masks the address
    once per group present and looks it up in a frozenset, so the cost depends on how
    many distinct prefix lengths there are (at most 33 + 129), not on how many entries.
    """

    __slots__ = ("_groups", "networks")

    def __init__(self, networks: Iterable[IPNetwork] = ()) -> None:
        self.networks: frozenset[IPNetwork] = frozenset(networks)
        grouped: dict[tuple[int, int], set[int]] = {}
        for network in self.networks:
            key = (network.version, network.prefixlen)
            grouped.setdefault(key, set()).add(int(network.network_address))
        groups: list[tuple[int, int, frozenset[int]]] = []
        for (version, prefixlen), starts in sorted(grouped.items()):
            bits = 32 if version == 4 else 128
            mask = ((1 << prefixlen) - 1) << (bits - prefixlen)
            groups.append((version, mask, frozenset(starts)))
        self._groups = tuple(groups)

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        ip = _unmap(ip)
        value, version = int(ip), ip.version
        return any(v == version and (value & mask) in starts for v, mask, starts in self._groups)

    def __len__(self) -> int:
        return len(self.networks)

    def __repr__(self) -> str:
        shown = sorted(str(n) for n in self.networks)
        if len(shown) > 8:
            shown = [*shown[:8], f"... {len(shown) - 8} more"]
        return f"NetworkSet({shown})"


def client_ip(ctx: SessionContext) -> IPAddress | None:
    """The client's address: `CLIENT_IP` if `ClientIP` resolved it, else the peer's."""
    resolved = ctx.get(CLIENT_IP, None)
    return resolved if resolved is not None else parse_ip(ctx.remote_ip)


# --- client address -----------------------------------------------------------------------


class ClientIP:
    """Resolve the client's IP into `CLIENT_IP`, trusting forwarding headers selectively.

    ``x-forwarded-for`` (or `header`) is read only when the direct peer is in
    `trusted_proxies` (IPs or CIDRs; empty by default, so the header is ignored): then
    the list is walked from the right, skipping trusted proxies, and the first
    untrusted address is the client (if every hop is trusted, the leftmost). Entries to
    the left of it are never read, so a client cannot spoof its way past the proxy.
    An unreadable entry reached by that walk is a 400. From an untrusted peer the
    header is ignored (and the fact logged) and the client is the peer itself.
    """

    def __init__(
        self, trusted_proxies: Iterable[NetworkSpec] = (), *, header: str = "x-forwarded-for"
    ) -> None:
        if isinstance(trusted_proxies, str):
            raise UsageError("trusted_proxies is a list of IPs or CIDRs, not one string")
        self.trusted = NetworkSet(parse_network(spec) for spec in trusted_proxies)
        self.header = header_name(header)

    def __repr__(self) -> str:
        trusted = sorted(str(n) for n in self.trusted.networks)
        return f"ClientIP(trusted_proxies={trusted!r}, header={self.header!r})"

    def resolve(self, request: ConnectRequest) -> IPAddress | None:
        """The client address for `request`; raises `ValueError` for a bad header."""
        peer = parse_ip(request.remote_ip)
        values = request.header_values(self.header)
        if peer is None or not values or peer not in self.trusted:
            return peer
        hops = [hop for value in values for hop in value.split(",")]
        client: IPAddress | None = None
        for hop in reversed(hops):
            if not hop.strip(" \t"):
                continue
            client = parse_ip(hop)
            if client is None:
                raise ValueError("unreadable address in the forwarding header")
            if client not in self.trusted:
                return client
        return client if client is not None else peer

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        try:
            resolved = self.resolve(ctx.request)
        except ValueError:
            _refuse(ctx, 400, f"malformed {self.header}", header=self.header)
        peer = parse_ip(ctx.remote_ip)
        if peer not in self.trusted and ctx.request.header(self.header) is not None:
            # Worth a line: from an untrusted peer this is a misconfigured proxy or a
            # spoofing attempt. The value itself is the client's and is not logged.
            log.info(
                "ignored forwarding header from an untrusted peer", header=self.header, **ctx.ids
            )
        if resolved is not None:
            ctx.set(CLIENT_IP, resolved)
        await call_next(ctx)


# --- IP filters ---------------------------------------------------------------------------


class IPAllowList:
    """Only let in clients whose address is in one of the given IPs or CIDRs (else 403).

    The address is `client_ip(ctx)`: the one `ClientIP` resolved, else the peer's.
    IPv4 and IPv6; IPv4-mapped IPv6 clients match IPv4 entries.
    """

    def __init__(self, *ips_or_cidrs: NetworkSpec) -> None:
        if not ips_or_cidrs:
            raise UsageError("IPAllowList needs at least one IP or CIDR")
        self.allowed = NetworkSet(parse_network(spec) for spec in ips_or_cidrs)

    def __repr__(self) -> str:
        shown = sorted(str(n) for n in self.allowed.networks)
        return f"IPAllowList({', '.join(repr(n) for n in shown)})"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        ip = client_ip(ctx)
        if ip not in self.allowed:
            _refuse(ctx, 403, "address not allowed", client_ip=str(ip))
        await call_next(ctx)


class IPBlockList:
    """Refuse clients whose address is in a blocked IP or CIDR (403); updatable at runtime.

    `add`, `remove` and `clear` may be called from any thread or task while sessions
    are being checked. The set of networks is an immutable `NetworkSet` snapshot:
    a check reads the current snapshot with one attribute load and takes no lock;
    writers build a new snapshot and swap it in under a small lock that only writers
    take (so two concurrent `add` calls cannot lose each other's entries). `remove`
    removes the entries equal to what it is given: a CIDR entry by its CIDR, a single
    address by the address; it does not carve an address out of a blocked CIDR.
    """

    def __init__(self, *ips_or_cidrs: NetworkSpec) -> None:
        self._write_lock = threading.Lock()
        self._snapshot = NetworkSet(parse_network(spec) for spec in ips_or_cidrs)

    def __repr__(self) -> str:
        return f"IPBlockList(<{len(self._snapshot)} entries>)"

    @property
    def networks(self) -> frozenset[IPNetwork]:
        """The blocked networks right now (a snapshot)."""
        return self._snapshot.networks

    def __len__(self) -> int:
        return len(self._snapshot)

    def __contains__(self, ip: object) -> bool:
        if isinstance(ip, str):
            ip = parse_ip(ip)
        return ip in self._snapshot

    def is_blocked(self, ip: str | IPAddress) -> bool:
        """Whether `ip` falls in a blocked network now."""
        return ip in self

    def add(self, *ips_or_cidrs: NetworkSpec) -> None:
        """Block more IPs or CIDRs; effective for the next CONNECT checked."""
        new = [parse_network(spec) for spec in ips_or_cidrs]
        with self._write_lock:
            self._snapshot = NetworkSet(self._snapshot.networks.union(new))

    def remove(self, *ips_or_cidrs: NetworkSpec) -> bool:
        """Unblock exactly these entries (IPs or CIDRs); whether any of them was blocked."""
        gone = {parse_network(spec) for spec in ips_or_cidrs}
        with self._write_lock:
            current = self._snapshot.networks
            if current.isdisjoint(gone):
                return False
            self._snapshot = NetworkSet(current - gone)
            return True

    def clear(self) -> None:
        """Unblock everything."""
        with self._write_lock:
            self._snapshot = NetworkSet()

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        ip = client_ip(ctx)
        # An address that cannot be read cannot be cleared against the list: fail closed.
        if ip is None or ip in self._snapshot:
            _refuse(ctx, 403, "address blocked", client_ip=str(ip))
        await call_next(ctx)


# --- user agent ---------------------------------------------------------------------------


class BlockUserAgent:
    """Refuse (403) clients whose ``user-agent`` contains one of `substrings`.

    Case-insensitive unless `case_sensitive`. A client without a user agent passes;
    add `RequireUserAgent` to refuse those too.
    """

    def __init__(self, *substrings: str, case_sensitive: bool = False) -> None:
        if not substrings or not all(isinstance(s, str) and s for s in substrings):
            raise UsageError("BlockUserAgent needs one or more non-empty substrings")
        self.case_sensitive = case_sensitive
        self.substrings = tuple(s if case_sensitive else s.casefold() for s in substrings)

    def __repr__(self) -> str:
        args = ", ".join(repr(s) for s in self.substrings)
        return f"BlockUserAgent({args}, case_sensitive={self.case_sensitive!r})"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        for agent in ctx.request.header_values("user-agent"):
            seen = agent if self.case_sensitive else agent.casefold()
            if any(s in seen for s in self.substrings):
                _refuse(ctx, 403, "user agent blocked")
        await call_next(ctx)


class RequireUserAgent:
    """Refuse (403) clients that send no ``user-agent``, or an empty one."""

    def __repr__(self) -> str:
        return "RequireUserAgent()"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        agent = ctx.request.user_agent
        if agent is None or not agent.strip():
            _refuse(ctx, 403, "user agent required")
        await call_next(ctx)


# --- origin -------------------------------------------------------------------------------

OriginValidator = Callable[[str, SessionContext], bool | Awaitable[bool | None] | None]
"""``validator(origin, ctx)``: True admits, False refuses, None defers to the list."""


def _normalize_origin(origin: str) -> str:
    # Scheme and host are case-insensitive; browsers serialise them in lower case.
    return origin.strip(" \t").rstrip("/").lower()


def _check_origin(origin: object) -> str:
    if not isinstance(origin, str):
        raise UsageError(f"an allowed origin must be a string, got {origin!r}")
    if origin in ("*", "null"):
        return origin
    scheme, sep, rest = _normalize_origin(origin).partition("://")
    if not sep or not scheme or not rest or any(c in rest for c in "/?#@ "):
        raise UsageError(
            f"an allowed origin looks like scheme://host[:port] (or '*' or 'null'), got {origin!r}"
        )
    return f"{scheme}://{rest}"


class CORS:
    """Check the ``origin`` header of the CONNECT (seed 000's ``CORS``).

    Browsers always send ``origin`` on a WebTransport CONNECT (and a WebSocket upgrade)
    and never run a CORS preflight for it: the server's check is the whole protection
    against other sites' pages opening sessions with a visitor's browser. The decision,
    in order:

    - no ``origin`` header: admitted if `allow_missing` (the default), else 403.
      Non-browser clients (native apps, servers, the aiowt client) send none, and
      without a browser there is no third-party page to protect against, so refusing
      them would stop legitimate clients and no attack. Set ``allow_missing=False`` on
      routes only browsers may use.
    - more than one ``origin`` header: 400.
    - `validator`, if given, is asked ``(origin, ctx)`` (sync or async): True admits
      (widening past the list), False refuses (narrowing it), None defers to the list.
      An exception refuses, and is logged.
    - `allowed_origins`: ``"*"`` admits every origin; otherwise the origin must equal
      one entry (scheme and host compared case-insensitively; ``"null"``, the opaque
      origin of sandboxed frames and files, only if listed literally). Else 403.
    """

    def __init__(
        self,
        allowed_origins: Iterable[str] = (),
        *,
        validator: OriginValidator | None = None,
        allow_missing: bool = True,
    ) -> None:
        if isinstance(allowed_origins, str):
            raise UsageError("allowed_origins is a list of origins, not one string")
        self.allowed_origins = tuple(_check_origin(o) for o in allowed_origins)
        if not self.allowed_origins and validator is None:
            raise UsageError("CORS needs allowed_origins, a validator, or both")
        if validator is not None:
            check_callable(validator, "validator")
        self.validator = validator
        self.allow_missing = allow_missing
        self._any = "*" in self.allowed_origins
        self._exact = frozenset(o for o in self.allowed_origins if o != "*")

    def __repr__(self) -> str:
        validator = callable_name(self.validator) if self.validator else None
        return (
            f"CORS({list(self.allowed_origins)!r}, validator={validator},"
            f" allow_missing={self.allow_missing!r})"
        )

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        values = ctx.request.header_values("origin")
        if not values:
            if not self.allow_missing:
                _refuse(ctx, 403, "origin required")
        elif len(values) > 1:
            _refuse(ctx, 400, "more than one origin header")
        elif not await self._admits(values[0], ctx):
            _refuse(ctx, 403, "origin not allowed")
        await call_next(ctx)

    async def _admits(self, origin: str, ctx: SessionContext) -> bool:
        if self.validator is not None:
            try:
                verdict = await maybe_await(self.validator(origin, ctx))
            except Exception:
                log.exception("origin validator raised; refusing", **ctx.ids)
                return False
            if verdict is not None:
                return bool(verdict)
        return self._any or _normalize_origin(origin) in self._exact
