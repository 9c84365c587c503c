"""A worked example of user-written actors and their property-based concurrency test.

`Scoreboard` is a shared actor (one per server) that owns the points of every player;
`Player` is the handler actor of one session. A player sends `{"type": "score",
"points": n}` on a stream and gets back its new total; the scoreboard is only ever
reached by messages, so totals stay exact however many sessions score at once.
`examples/test_scoreboard.py` proves it with the testing kit.

Run it: `aiowt run examples.scoreboard:server --self-signed`.
"""

from __future__ import annotations

from typing import Any

from aiowt import CloseCode, Handler, Server, SessionContext, Stream
from aiowt.actors import LoopActor


class Scoreboard(LoopActor):
    """Points per player; `add` answers the player's new total."""

    def __init__(self) -> None:
        super().__init__()
        self.points: dict[str, int] = {}

    def add(self, player: str, points: int) -> int:
        self.points[player] = self.points.get(player, 0) + points
        return self.points[player]

    def total(self, player: str) -> int:
        return self.points.get(player, 0)


class Player(Handler):
    """One session of a player named by the route's `{name}`."""

    scoreboard: Any = None  # set by `build_server`; a Scoreboard proxy

    def __init__(self, ctx: SessionContext, session: Any) -> None:
        super().__init__(ctx, session)
        self.name = ctx.path_params["name"]

    async def on_message(self, message: Any, stream: Stream | None) -> None:
        if not isinstance(message, dict) or message.get("type") != "score":
            self.close(CloseCode.PROTOCOL_ERROR, "expected {'type': 'score', 'points': n}")
            return
        points = message.get("points")
        if not isinstance(points, int) or not 0 < points <= 100:
            self.close(CloseCode.PROTOCOL_ERROR, "points must be an integer from 1 to 100")
            return
        total = await self.scoreboard.add(self.name, points)
        reply = {"type": "total", "player": self.name, "total": total}
        if stream is not None and stream.writable:
            stream.send_message(reply)
        else:
            self.send_datagram_message(reply)


def build_server(scoreboard: Any, **options: Any) -> Server:
    """A server whose players share `scoreboard` (an ActorProxy of a `Scoreboard`)."""
    player = type("BoundPlayer", (Player,), {"scoreboard": scoreboard})
    server = Server(**options)
    server.route("/players/{name}", player)
    return server


class _LazyScoreboard:
    """Starts the scoreboard on first use: actors need the running loop."""

    def __init__(self) -> None:
        self._proxy: Any = None

    def add(self, player: str, points: int) -> Any:
        if self._proxy is None:
            self._proxy = Scoreboard.start().proxy()
        return self._proxy.add(player, points)


server = build_server(_LazyScoreboard())
