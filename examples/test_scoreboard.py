"""The scoreboard example, tested the way users test their own actors: with the kit."""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from aiowt.testing import ActorScope, ActorStateMachine
from examples.scoreboard import Scoreboard, build_server

players = st.sampled_from(["ann", "bob", "cy"])


class ScoreboardMachine(ActorStateMachine):
    """Concurrent senders add points; every reply must fit some sequential order."""

    operations = st.tuples(players, st.integers(1, 100))

    def make_target(self) -> Any:
        return Scoreboard.start()

    def invoke(self, target: Any, op: Any) -> Any:
        return target.proxy().add(*op)

    def make_model(self) -> Any:
        return {}

    def apply(self, model: Any, op: Any) -> Any:
        player, points = op
        model[player] = model.get(player, 0) + points
        return model[player]


def test_scoreboard_totals_are_exact_under_any_interleaving() -> None:
    run_state_machine_as_test(
        ScoreboardMachine, settings=settings(max_examples=30, stateful_step_count=5, deadline=None)
    )


async def test_players_score_through_real_sessions(actor_scope: ActorScope) -> None:
    scoreboard = actor_scope.start(Scoreboard).proxy()
    server = build_server(scoreboard)
    sessions = [
        await server.connect_in_memory(f"/players/{name}") for name in ("ann", "ann", "bob")
    ]
    try:
        streams = [session.open_stream() for session in sessions]
        for stream in streams:
            stream.send_message({"type": "score", "points": 10})
        totals = sorted([(await stream.receive_message())["total"] for stream in streams])
        assert totals == [10, 10, 20]  # ann's two sessions share her total, bob has his own
        assert await scoreboard.total("ann") == 20
    finally:
        for session in sessions:
            await session.aclose()
        await server.shutdown()
