"""`SessionRegistry`: the live sessions, the global cap, lookup, and delivery to many.

A session is registered by its `SessionContext.session_id` before it is accepted (that
is when the global cap is checked), its transport `Session` is attached once accepted,
and it is unregistered when it ends. Broadcasts encode the message once and send it to
every attached session through that session's `OutboundChannel`, so the slow-consumer
policy holds for the registry's deliveries as for any other: a peer too far behind on
its stream is closed with `SLOW_CONSUMER`, a datagram it cannot take is dropped. A
session whose delivery fails that way (or closed meanwhile) is counted as failed, and
the others still get the message.

The registry calls `Session` methods, which belong to the event loop that owns the
connection: start the registry on the server's loop (middleware do so when they start
it themselves). Asks may come from any thread.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from aiowt.transport import AiowtError, Session, UsageError
from aiowt.transport.framing import encode_frame, encode_message

from ._service import Request, Service, handles
from .outbound import OutboundChannel

__all__ = [
    "Attach",
    "Broadcast",
    "BroadcastExcept",
    "CountSessions",
    "Delivery",
    "ListSessions",
    "Listed",
    "LookupSession",
    "Multicast",
    "Register",
    "SessionInfo",
    "SessionRegistry",
    "ToUser",
    "Unregister",
]

log = structlog.get_logger("aiowt.actors")

Via = Literal["datagram", "stream"]


# --- messages -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Register(Request[bool]):
    """Ask to count session `session_id` as live, if fewer than `limit` are (None: no cap).

    Replies True when it is registered afterwards, False when the cap is reached. A
    session already registered is not counted again: the registration takes one more
    hold on it (two `MaxSessions` sharing the registry, say), and the session stays
    live until every hold is released by its `Unregister`. (`MaxSessions` caps in the
    rate-limit registry, with the chain's other limits, and registers here without one.)
    """

    session_id: str
    limit: int | None = None
    remote_ip: str = ""
    path: str = ""
    user: str = ""
    """Who the session is (its authenticated identity), for `ToUser`; "" for nobody."""


@dataclass(frozen=True, slots=True)
class Attach(Request[bool]):
    """The registered session `session_id` was accepted as `session`; False if unknown."""

    session_id: str
    session: Session


@dataclass(frozen=True, slots=True)
class Unregister(Request[bool]):
    """Release one hold on session `session_id` (see `Register`); True if it was
    registered. The session leaves the registry with its last hold; unknown ids are a
    no-op."""

    session_id: str


@dataclass(frozen=True, slots=True)
class LookupSession(Request["SessionInfo | None"]):
    """Ask for what the registry knows about `session_id`."""

    session_id: str


@dataclass(frozen=True, slots=True)
class CountSessions(Request[int]):
    """Ask how many sessions are registered."""


@dataclass(frozen=True, slots=True)
class ListSessions(Request["tuple[SessionInfo, ...]"]):
    """Ask for every registered session, in registration order."""


@dataclass(frozen=True, slots=True)
class Listed(Request[bool]):
    """Replies once the registrations made before it are seen by every process: at once
    in one process; on a shared backend once written there (False if it could not be
    reached, and the sessions are listed when it can)."""


@dataclass(frozen=True, slots=True)
class Broadcast(Request["Delivery"]):
    """Send msgpack `message` to every attached session (a datagram, or a stream frame)."""

    message: Any
    via: Via = "datagram"


@dataclass(frozen=True, slots=True)
class Multicast(Request["Delivery"]):
    """Send msgpack `message` to the sessions in `session_ids`."""

    session_ids: Collection[str]
    message: Any
    via: Via = "datagram"


@dataclass(frozen=True, slots=True)
class ToUser(Request["Delivery"]):
    """Send msgpack `message` to every session registered for `user` (one person may
    have several: tabs, devices). `missing` counts none: a user without sessions gets
    a `Delivery` of zeros."""

    user: str
    message: Any
    via: Via = "datagram"


@dataclass(frozen=True, slots=True)
class BroadcastExcept(Request["Delivery"]):
    """Send msgpack `message` to every attached session but `session_id`."""

    session_id: str
    message: Any
    via: Via = "datagram"


# --- replies ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A registered session as the registry sees it."""

    session_id: str
    remote_ip: str
    path: str
    registered_at: float
    """`time.monotonic()` at registration."""
    session: Session | None
    """The transport session; None until it is accepted."""
    user: str = ""


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of a broadcast: sessions sent to, sends that failed, and targets
    that were not deliverable (unknown ids, or registered but not accepted yet).

    On a shared backend, `forwarded` counts the targets held by other processes: the
    message was handed on to them, and they count their own deliveries.
    """

    delivered: int = 0
    failed: int = 0
    missing: int = 0
    forwarded: int = 0


# --- the actor ----------------------------------------------------------------------------


class _Entry:
    __slots__ = ("channel", "holds", "info")

    def __init__(self, info: SessionInfo) -> None:
        self.holds = 1
        self.info = info
        self.channel: OutboundChannel | None = None


class SessionRegistry(Service):
    """The actor that owns the set of live sessions. Messages: `Register`, `Attach`,
    `Unregister`, `LookupSession`, `CountSessions`, `ListSessions`, `Listed`,
    `Broadcast`, `Multicast`, `BroadcastExcept`, `ToUser`.

    Stream deliveries go on the session's `OutboundChannel` stream (one server-opened
    unidirectional stream, opened on first use and kept), so a session receives the
    registry's messages in order.
    """

    def __init__(self) -> None:
        super().__init__()
        self._entries: dict[str, _Entry] = {}
        self._users: dict[str, dict[str, None]] = {}
        """User -> the ids of their sessions, in registration order."""

    def __repr__(self) -> str:
        return f"<SessionRegistry sessions={len(self._entries)}>"

    @handles(Register)
    def _register(self, message: Register) -> bool:
        session_id = _id(message.session_id)
        limit = message.limit
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise UsageError(f"limit must be an int or None, got {limit!r}")
        if not all(isinstance(v, str) for v in (message.remote_ip, message.path, message.user)):
            raise UsageError("remote_ip, path and user must be str")
        entry = self._entries.get(session_id)
        if entry is not None:
            entry.holds += 1
            return True
        if limit is not None and len(self._entries) >= limit:
            return False
        info = SessionInfo(
            session_id, message.remote_ip, message.path, time.monotonic(), None, message.user
        )
        self._entries[session_id] = _Entry(info)
        if message.user:
            self._users.setdefault(message.user, {})[session_id] = None
        return True

    @handles(Attach)
    def _attach(self, message: Attach) -> bool:
        entry = self._entries.get(_id(message.session_id))
        if entry is None:
            return False
        entry.channel = OutboundChannel(message.session)
        entry.info = SessionInfo(
            entry.info.session_id,
            entry.info.remote_ip,
            entry.info.path,
            entry.info.registered_at,
            message.session,
            entry.info.user,
        )
        return True

    @handles(Unregister)
    def _unregister(self, message: Unregister) -> bool:
        session_id = _id(message.session_id)
        entry = self._entries.get(session_id)
        if entry is None:
            return False
        entry.holds -= 1
        if not entry.holds:
            del self._entries[session_id]
            user = entry.info.user
            sessions = self._users.get(user)
            if sessions is not None:
                sessions.pop(session_id, None)
                if not sessions:
                    del self._users[user]
        return True

    @handles(LookupSession)
    def _lookup(self, message: LookupSession) -> SessionInfo | None:
        entry = self._entries.get(_id(message.session_id))
        return None if entry is None else entry.info

    @handles(CountSessions)
    def _count(self, message: CountSessions) -> int:
        return len(self._entries)

    @handles(ListSessions)
    def _list(self, message: ListSessions) -> tuple[SessionInfo, ...]:
        return tuple(entry.info for entry in self._entries.values())

    @handles(Listed)
    def _listed(self, message: Listed) -> bool:
        return True

    @handles(Broadcast)
    def _broadcast(self, message: Broadcast) -> Delivery:
        payload = encode_for(message.message, message.via)
        return self._send(payload, message.via, self._targets(None), 0)

    @handles(BroadcastExcept)
    def _broadcast_except(self, message: BroadcastExcept) -> Delivery:
        payload = encode_for(message.message, message.via)
        return self._send(payload, message.via, self._targets(_id(message.session_id)), 0)

    @handles(Multicast)
    def _multicast(self, message: Multicast) -> Delivery:
        ids = _ids(message.session_ids)
        payload = encode_for(message.message, message.via)
        targets = [self._entries[sid] for sid in ids if sid in self._entries]
        return self._send(payload, message.via, targets, len(ids) - len(targets))

    @handles(ToUser)
    def _to_user(self, message: ToUser) -> Delivery:
        payload = encode_for(message.message, message.via)
        return self._send(payload, message.via, self._user_targets(_user(message.user)), 0)

    # --- delivery ------------------------------------------------------------------------------
    def _user_targets(self, user: str) -> list[_Entry]:
        return [self._entries[sid] for sid in self._users.get(user, ())]

    def _targets(self, skip: str | None) -> list[_Entry]:
        return [entry for sid, entry in self._entries.items() if sid != skip]

    def _send(self, payload: bytes, via: Via, targets: list[_Entry], missing: int) -> Delivery:
        """Send an encoded message to each target; one failing does not stop the others."""
        delivered = failed = 0
        for entry in targets:
            channel = entry.channel
            if channel is None:
                missing += 1
                continue
            try:
                if via == "datagram":
                    sent = channel.send_datagram(payload)
                else:
                    sent = channel.send_frame(payload)
            except AiowtError as error:
                sent = False
                log.info(
                    "broadcast to a session failed",
                    session_id=entry.info.session_id,
                    error=repr(error),
                )
            except Exception:
                sent = False
                log.exception("broadcast to a session failed", session_id=entry.info.session_id)
            # Closed meanwhile, too slow (closed by the channel's policy), datagram
            # dropped: this session misses the message, the others do not.
            if sent:
                delivered += 1
            else:
                failed += 1
        return Delivery(delivered, failed, missing)


def encode_for(message: Any, via: Via) -> bytes:
    """`message` as it goes `via`: a datagram's msgpack, or a stream frame.

    Encoded once, before anything is sent: an unencodable message fails the whole
    request (UsageError to the asker) instead of reaching half the sessions.
    """
    if via == "datagram":
        return encode_message(message)
    if via == "stream":
        return encode_frame(message)
    raise UsageError(f"via must be 'datagram' or 'stream', got {via!r}")


def _ids(session_ids: object) -> list[str]:
    """The distinct ids of a `Multicast`, in order."""
    if isinstance(session_ids, str) or not isinstance(session_ids, Collection):
        raise UsageError(f"session_ids must be a collection of ids, got {session_ids!r}")
    return list(dict.fromkeys(_id(sid) for sid in session_ids))


def _user(user: object) -> str:
    if not isinstance(user, str) or not user:
        raise UsageError(f"a user is a non-empty str, got {user!r}")
    return user


def _id(session_id: object) -> str:
    if not isinstance(session_id, str):
        raise UsageError(f"a session id is a str, got {session_id!r}")
    return session_id
