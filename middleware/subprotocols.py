"""`Subprotocols`: negotiate the application protocol.

The client offers ``wt-available-protocols``; the server answers ``wt-protocol``.
"""

from __future__ import annotations

import re

import structlog

from aiowt.transport import Rejected, SessionContext, UsageError

from .chain import CallNext
from .keys import SUBPROTOCOL

__all__ = ["Subprotocols", "parse_available_protocols"]

log = structlog.get_logger("aiowt.middleware")


def _split_members(value: str) -> list[str]:
    """Split a structured-field list on commas that are not inside a quoted string."""
    members: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            members.append("".join(current))
            current = []
            continue
        current.append(char)
    members.append("".join(current))
    return members


def _bare_item(member: str) -> str | None:
    """The string of one list member, without parameters; ``None`` if unreadable."""
    member = member.strip(" \t")
    if not member:
        return None
    if member[0] == '"':
        out: list[str] = []
        index = 1
        while index < len(member):
            char = member[index]
            if char == "\\" and index + 1 < len(member):
                out.append(member[index + 1])
                index += 2
                continue
            if char == '"':
                return "".join(out) or None
            out.append(char)
            index += 1
        return None  # unterminated string
    # Lenient: a bare token is taken as the string it spells; parameters are dropped.
    token = member.split(";", 1)[0].strip(" \t")
    if not token or any(c in token for c in ' \t"\\'):
        return None
    return token


def parse_available_protocols(values: list[str]) -> list[str]:
    """The protocols a client offers in ``wt-available-protocols``, in its order.

    The field is a structured-field list of strings (``"chat-v2", "chat-v1"``). The
    parse is lenient: bare tokens are accepted as strings, parameters are ignored,
    unreadable members are skipped, several header lines are one list.
    """
    # A dict keeps the client's order and drops repeats in linear time: the header can
    # hold thousands of members, and this runs on the event loop.
    offered: dict[str, None] = {}
    for member in _split_members(", ".join(values)):
        item = _bare_item(member)
        if item is not None:
            offered.setdefault(item)
    return list(offered)


_SF_STRING = re.compile(r"[\x20-\x7e]+")


def _sf_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Subprotocols:
    """Negotiate the application protocol: ``wt-available-protocols`` → ``wt-protocol``.

    The client offers a list; the server picks the first of `supported` (in the
    server's order of preference) that the client offered, sends it back as the
    ``wt-protocol`` response header (a structured-field string) and stores it under
    `SUBPROTOCOL`. With `required` (the default) a session without a common protocol,
    including a client that offered none, is refused with 406; otherwise it goes on
    with no protocol selected (a browser then reports ``transport.protocol == ""``).
    """

    def __init__(self, supported: list[str] | tuple[str, ...], *, required: bool = True) -> None:
        if isinstance(supported, str) or not supported:
            raise UsageError("Subprotocols needs a non-empty list of protocol names")
        for name in supported:
            # Printable ASCII is what an sf-string can hold; surrounding spaces would end
            # up in the 406 reason header, where HTTP/3 forbids them.
            if not isinstance(name, str) or not _SF_STRING.fullmatch(name) or name != name.strip():
                raise UsageError(
                    f"protocol names must be printable ASCII without surrounding spaces,"
                    f" got {name!r}"
                )
        if len(set(supported)) != len(supported):
            raise UsageError(f"protocol names must be unique, got {list(supported)!r}")
        self.supported: tuple[str, ...] = tuple(supported)
        self.required = required

    def __repr__(self) -> str:
        return f"Subprotocols({list(self.supported)!r}, required={self.required!r})"

    def choose(self, offered: list[str]) -> str | None:
        """The protocol to use for a client offering `offered`, or ``None``."""
        offered_set = set(offered)
        return next((name for name in self.supported if name in offered_set), None)

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        offered = parse_available_protocols(ctx.request.header_values("wt-available-protocols"))
        chosen = self.choose(offered)
        if chosen is None:
            if self.required:
                log.info("refused: no common subprotocol", offered=len(offered), **ctx.ids)
                raise Rejected(
                    406, "no supported subprotocol; this route speaks " + ", ".join(self.supported)
                )
        else:
            ctx.set(SUBPROTOCOL, chosen)
            ctx.add_response_header("wt-protocol", _sf_string(chosen))
        await call_next(ctx)
