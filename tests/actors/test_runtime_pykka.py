"""Canaries for the pykka internals `aiowt.actors._runtime` builds on.

`LoopActor`/`LoopFuture` use pykka's documented extension points, but also lean on a
few private details (named below, one test each). A pykka upgrade that changes any of
them must fail here, with the reason, before it breaks actors in subtle ways.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import threading
from typing import Any

import pykka
from pykka import ActorRef, ActorRegistry, Future
from pykka._actor import Actor
from pykka._envelope import Envelope
from pykka.messages import ProxyCall, _ActorStop

from aiowt.actors._runtime import LoopFuture


def params(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_pykka_is_the_pinned_minor_version() -> None:
    # Everything below was checked against 4.5; re-check it when bumping the pin.
    assert importlib.metadata.version("pykka").startswith("4.5.")


def test_extension_points_keep_their_names_and_shapes() -> None:
    assert {"_create_actor_inbox", "_create_future", "_start_actor_loop"} <= set(
        Actor.__abstractmethods__
    )
    for name in ("_create_actor_inbox", "_create_future"):
        assert isinstance(inspect.getattr_static(Actor, name), staticmethod), name
        assert params(getattr(Actor, name)) == [], name
    assert params(Actor._start_actor_loop) == ["self"]


class _RecordingInbox:
    def __init__(self) -> None:
        self.envelopes: list[Envelope[Any]] = []

    def put(self, envelope: Envelope[Any], /) -> None:
        self.envelopes.append(envelope)

    def get(self) -> Envelope[Any]:
        return self.envelopes.pop(0)

    def empty(self) -> bool:
        return not self.envelopes


class _Probe(Actor):
    """Never started: only its constructor and its ref are exercised."""

    @staticmethod
    def _create_actor_inbox() -> Any:
        return _RecordingInbox()

    @staticmethod
    def _create_future() -> Future[Any]:
        return LoopFuture()

    def _start_actor_loop(self) -> None:
        raise AssertionError("not started in these tests")


def test_actor_init_builds_the_fields_the_ref_shares() -> None:
    # LoopActor binds the inbox it got from `_create_actor_inbox()` to the loop at start,
    # and marks itself stopped through `actor_stopped`, which the ref reads.
    actor = _Probe()
    assert isinstance(actor.actor_inbox, _RecordingInbox)
    assert isinstance(actor.actor_stopped, threading.Event)
    assert actor.actor_urn.startswith("urn:uuid:")
    ref = actor.actor_ref
    assert ref.actor_inbox is actor.actor_inbox
    assert ref.actor_stopped is actor.actor_stopped
    assert ref.is_alive()
    actor.actor_stopped.set()
    assert not ref.is_alive()


def test_actor_start_is_construct_register_start_loop() -> None:
    # LoopActor.start() re-implements this sequence (checking the loop first and making
    # registration optional); if pykka's grows a step, LoopActor.start() must too.
    source = inspect.getsource(Actor.start)
    steps = [
        "cls(*args, **kwargs)",
        "ActorRegistry.register(obj.actor_ref)",
        "obj._start_actor_loop()",
    ]
    positions = [source.index(step) for step in steps]
    assert positions == sorted(positions)
    assert source.count("obj.") == 4  # obj.actor_ref (x2), the two above: nothing else


def test_ref_ask_tell_and_stop_go_through_the_inbox_and_create_future() -> None:
    actor = _Probe()
    ref: ActorRef[_Probe] = actor.actor_ref
    inbox = actor.actor_inbox
    assert isinstance(inbox, _RecordingInbox)

    ref.tell("told")
    future = ref.ask("asked", block=False)
    stopping = ref.stop(block=False)

    told, asked, stop = inbox.envelopes
    assert (told.message, told.reply_to) == ("told", None)
    assert asked.message == "asked"
    assert asked.reply_to is future
    assert isinstance(future, LoopFuture)  # from the actor class's _create_future()
    assert isinstance(stop.message, _ActorStop)
    # stop()'s result is a *new* future of the same class, driven by a get hook that
    # calls get() on the ask future: LoopFuture.__await__ relies on exactly that.
    assert type(stopping) is LoopFuture
    assert stopping is not stop.reply_to
    assert stopping._get_hook is not None
    assert stop.reply_to is not None
    stop.reply_to.set(None)
    assert stopping.get(timeout=0) is True


def test_envelope_fields() -> None:
    assert Envelope.__slots__ == ["message", "reply_to"]
    assert params(Envelope.__init__) == ["self", "message", "reply_to"]


def test_the_methods_loop_actor_overrides_keep_their_signatures() -> None:
    # LoopActor overrides these; a rename in pykka would leave the override dead code.
    assert params(Actor._handle_receive) == ["self", "message"]
    assert params(Actor._stop) == ["self"]
    assert params(Actor._actor_loop_teardown) == ["self"]
    failure = ["self", "exception_type", "exception_value", "traceback"]
    assert params(Actor._handle_failure) == failure
    assert params(Actor.on_failure) == failure
    for hook in ("on_start", "on_stop"):
        assert params(getattr(Actor, hook)) == ["self"]


def test_handle_receive_routes_stop_to_stop_and_dispatches_proxy_calls() -> None:
    # LoopActor intercepts _ActorStop before calling super()._handle_receive().
    source = inspect.getsource(Actor._handle_receive)
    assert "isinstance(message, messages._ActorStop)" in source
    assert "return self._stop()" in source

    class Target(_Probe):
        def double(self, x: int) -> int:
            return 2 * x

    assert Target()._handle_receive(ProxyCall(("double",), (21,), {})) == 42


def test_future_get_hook_protocol() -> None:
    # LoopFuture.get()/__await__ delegate hooked futures to Future.get(), which calls
    # the hook with the timeout and caches a successful result.
    calls: list[float | None] = []

    class Bare(Future[int]):
        pass

    bare = Bare()
    assert bare._get_hook is None
    try:
        bare.get()
    except NotImplementedError:
        pass
    else:
        raise AssertionError("Future.get() without a hook must raise NotImplementedError")
    bare.set_get_hook(lambda timeout: calls.append(timeout) or 7)
    assert bare.get(timeout=1.5) == 7
    assert bare.get(timeout=2.5) == 7
    assert calls == [1.5]


def test_derived_futures_are_built_from_the_same_class_with_a_hook() -> None:
    source: LoopFuture[list[int]] = LoopFuture()
    other: LoopFuture[int] = LoopFuture()
    derived = [
        source.map(len),
        source.filter(bool),
        source.join(other),
        source.reduce(lambda a, b: a + b),
    ]
    for future in derived:
        assert type(future) is LoopFuture
        assert future._get_hook is not None


def test_registry_api_used() -> None:
    assert isinstance(ActorRegistry._actor_refs, list)  # the tests swap it per test
    assert params(ActorRegistry.register) == ["actor_ref"]
    assert params(ActorRegistry.unregister) == ["actor_ref"]
    stop_all = inspect.signature(ActorRegistry.stop_all).parameters
    assert stop_all["block"].kind is inspect.Parameter.KEYWORD_ONLY
    assert stop_all["timeout"].kind is inspect.Parameter.KEYWORD_ONLY
    assert issubclass(pykka.ActorDeadError, Exception)
    assert issubclass(pykka.Timeout, Exception)


def test_loop_actor_init_mirrors_pykkas() -> None:
    # LoopActor.__init__ re-implements pykka's (with a light stopped flag).
    source = inspect.getsource(Actor.__init__)
    assert [line.strip() for line in source.splitlines() if line.strip().startswith("self.")] == [
        "self.actor_urn = uuid.uuid4().urn",
        "self.actor_inbox = self._create_actor_inbox()",
        "self.actor_stopped = threading.Event()",
        "self._actor_ref = ActorRef(self)",
    ]
