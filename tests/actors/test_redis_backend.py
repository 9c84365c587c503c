"""`RedisSlots` and `RedisBackend` against a real redis-server.

Several stores with one prefix stand for several processes. Lease expiry runs on a
clock the test moves (`clock=`), so a "crash" (a store dropped without releasing) is
followed by exactly the time the lease needs, no sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import from_url
from redis.exceptions import ResponseError
from structlog.testing import capture_logs

from aiowt.actors import MetricsCollector, ask
from aiowt.actors import metric_names as names
from aiowt.actors._redis import Batcher
from aiowt.actors.backend import InProcess, backend_from_url
from aiowt.actors.metrics import TakeSnapshot
from aiowt.actors.ratelimit import AcquireAll, Claim, HolderCounts, RateLimitRegistry, ReleaseAll
from aiowt.actors.redis_backend import RedisBackend, RedisSlots
from aiowt.transport import UsageError
from tests.redis_server import RedisServer

LEASE_MS = 15_000


class Clock:
    """Milliseconds, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def _store(url: str, clock: Callable[[], int] | None = None, **options: Any) -> RedisSlots:
    backend = RedisBackend.from_url(url)
    return RedisSlots(
        from_url(backend.url),
        prefix=backend.prefix,
        lease=LEASE_MS / 1000,
        timeout=options.pop("timeout", 2.0),
        clock=clock,
        **options,
    )


@pytest.fixture
async def stores(redis_server: RedisServer) -> AsyncIterator[Callable[..., RedisSlots]]:
    """Make stores on one fresh prefix (processes of one cluster); closed after."""
    url = redis_server.url()
    made: list[RedisSlots] = []

    def make(clock: Callable[[], int] | None = None, **options: Any) -> RedisSlots:
        made.append(_store(url, clock, **options))
        return made[-1]

    yield make
    for store in made:
        await store.close()


IP = Claim("ip", "10.0.0.1", 2)
SESSIONS = Claim("sessions", "", 3)


async def test_admission_is_all_or_none_across_processes(
    stores: Callable[..., RedisSlots],
) -> None:
    one, two = stores(), stores()
    assert await one.acquire("a", [IP, SESSIONS]) is None
    assert await two.acquire("b", [IP, SESSIONS]) is None
    assert await two.acquire("b", [IP, SESSIONS]) is None  # held already: still one each
    assert await one.acquire("c", [SESSIONS, IP]) == 1  # the ip is full: nothing taken
    assert await one.counts() == {"ip": {"10.0.0.1": 2}, "sessions": {"": 2}}
    assert await one.acquire("c", [SESSIONS]) is None
    assert await two.acquire("d", [SESSIONS]) == 0  # three sessions: full
    assert await one.release("a", [IP, SESSIONS]) == 2
    assert await one.release("a", [IP, SESSIONS]) == 0  # twice: nothing more
    assert await two.acquire("d", [IP, SESSIONS]) is None
    assert await two.count("sessions", "") == 3
    for store, holder in ((two, "b"), (one, "c"), (two, "d")):
        await store.release(holder, [IP, SESSIONS])
    assert await one.counts() == {}


async def test_prefixes_keep_clusters_apart(redis_server: RedisServer) -> None:
    first, second = _store(redis_server.url()), _store(redis_server.url())
    try:
        only = Claim("sessions", "", 1)
        assert await first.acquire("a", [only]) is None
        assert await second.acquire("b", [only]) is None
    finally:
        await first.close()
        await second.close()


async def test_a_dead_process_holds_its_slots_for_one_lease_at_most(
    stores: Callable[..., RedisSlots],
) -> None:
    clock = Clock()
    dead, alive = stores(clock), stores(clock)
    one = Claim("sessions", "", 1)
    assert await dead.acquire("gone", [one]) is None  # then the process dies: no release
    clock.now += LEASE_MS - 1
    assert await alive.acquire("new", [one]) == 0
    clock.now += 1
    assert await alive.acquire("new", [one]) is None


async def test_the_keeper_renews_the_leases_of_live_sessions(
    stores: Callable[..., RedisSlots],
) -> None:
    clock = Clock()
    keeper, other = stores(clock), stores(clock)
    one = Claim("sessions", "", 1)
    assert await keeper.acquire("live", [one]) is None
    clock.now += LEASE_MS // 2
    await keeper.renew()
    clock.now += LEASE_MS // 2 + 1  # past the first lease, inside the renewed one
    assert await other.acquire("new", [one]) == 0
    await keeper.release("live", [one])
    assert await other.acquire("new", [one]) is None  # a clean release is immediate


async def test_an_unreachable_redis_follows_the_failure_policy(tmp_path: Any) -> None:
    nowhere = f"unix://{tmp_path}/absent.sock?prefix=x"
    metrics = MetricsCollector.start()
    try:
        partition = _store(nowhere, processes=3, metrics=metrics, timeout=0.05)
        claim = Claim("sessions", "", 7)  # 7 // 3: two per process
        with capture_logs() as logs:
            outcomes = [await partition.acquire(f"s{n}", [claim]) for n in range(3)]
        assert outcomes == [None, None, 0]
        assert not partition.connected
        assert [e["event"] for e in logs] == ["redis unreachable; limits follow the failure policy"]
        await partition.release("s0", [claim])
        assert await partition.acquire("s2", [claim]) is None
        snapshot = await ask(metrics, TakeSnapshot())
        assert snapshot.value(names.BACKEND_CONNECTED.name, {"backend": "redis"}) == 0
        changes = {"backend": "redis", "to": "unreachable"}
        assert snapshot.value(names.BACKEND_STATE_CHANGES.name, changes) == 1
        await partition.close()

        opened = _store(nowhere, failure="open", timeout=0.05)
        assert [await opened.acquire(f"s{n}", [Claim("ip", "x", 1)]) for n in range(3)] == [
            None
        ] * 3
        await opened.close()
        closed = _store(nowhere, failure="closed", timeout=0.05)
        assert await closed.acquire("s", [Claim("ip", "x", 5)]) == 0
        await closed.close()
    finally:
        await metrics.stop(block=False)


async def test_a_restarted_redis_gets_the_live_slots_back(own_redis_server: RedisServer) -> None:
    url = own_redis_server.url()
    store = _store(url, max_backoff=0.0, timeout=0.2)
    observer = _store(url)
    claim = Claim("sessions", "", 4)
    try:
        assert await store.acquire("before", [claim]) is None
        own_redis_server.stop()
        # Unreachable: admitted by the partition policy (processes=1: the whole limit),
        # with the session admitted before the outage counted.
        assert await store.acquire("during", [claim]) is None
        assert not store.connected
        own_redis_server.start()  # empty: nothing was saved
        await store.renew()  # what the keeper does next: reach Redis, write back
        assert store.connected
        assert await observer.count("sessions", "") == 2
        assert await store.acquire("after", [claim]) is None
        assert await observer.count("sessions", "") == 3
        for holder in ("before", "during", "after"):
            await store.release(holder, [claim])
        assert await observer.counts() == {}
    finally:
        await store.close()
        await observer.close()


async def test_the_registry_answers_the_same_messages_on_redis(redis_server: RedisServer) -> None:
    services = RedisBackend.from_url(redis_server.url()).start()
    try:
        ref = services.rate_limits
        assert await ask(ref, AcquireAll("a", (IP,))) is None
        assert await ask(ref, HolderCounts()) == {"ip": {"10.0.0.1": 1}}
        assert await ask(ref, ReleaseAll("a", (IP,))) == 1
        assert await ask(ref, HolderCounts()) == {}
    finally:
        await services.stop()


def test_backend_urls() -> None:
    backend = backend_from_url("redis://user:s3cret@cache:6380/2?prefix=app&lease=5&processes=4")
    assert isinstance(backend, RedisBackend)
    assert (backend.url, backend.prefix, backend.lease, backend.processes) == (
        "redis://user:s3cret@cache:6380/2",
        "app",
        5.0,
        4,
    )
    assert "s3cret" not in repr(backend)
    assert "s3cret" not in backend.location
    assert isinstance(backend_from_url("memory:"), InProcess)
    unix = backend_from_url("unix:///run/redis.sock?db=1&failure=closed")
    assert isinstance(unix, RedisBackend)
    assert (unix.url, unix.failure) == ("unix:///run/redis.sock?db=1", "closed")
    for bad in (
        "http://x",
        "redis://x?lease=-1",
        "redis://x?failure=maybe",
        "redis://x?prefix={a}",
    ):
        with pytest.raises(UsageError):
            backend_from_url(bad)


# --- every interleaving of admissions, releases and crashes stays within the limit ---------

LIMIT = 3
step = st.one_of(
    st.tuples(st.just("admit"), st.integers(0, 2), st.integers(0, 5)),
    st.tuples(st.just("release"), st.integers(0, 2), st.integers(0, 5)),
    st.tuples(st.just("crash"), st.integers(0, 2), st.just(0)),
    st.tuples(st.just("wait"), st.just(0), st.integers(1, LEASE_MS)),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(step, max_size=6), min_size=1, max_size=4))
def test_processes_interleaved_never_admit_over_the_limit(
    redis_server: RedisServer, batches: list[list[tuple[str, int, int]]]
) -> None:
    """Each batch's admissions run concurrently from three processes (Redis decides the
    interleaving). After every batch the live slots are exactly the sessions admitted
    and neither released nor past their lease (a crashed process releases nothing), and
    never more than the limit."""

    async def scenario() -> None:
        clock = Clock()
        url = redis_server.url()
        processes = [_store(url, clock) for _ in range(3)]
        generation = [0, 0, 0]  # a restarted process has new session ids
        claim = Claim("sessions", "", LIMIT)
        leases: dict[str, int] = {}  # holder -> when its lease ends
        try:
            for batch in batches:
                admits: list[tuple[str, int]] = []
                for kind, process, n in batch:
                    holder = f"g{generation[process]}p{process}s{n}"
                    if kind == "admit":
                        admits.append((holder, process))
                    elif kind == "release":
                        await processes[process].release(holder, [claim])
                        leases.pop(holder, None)
                    elif kind == "crash":
                        # Gone without a release: its connection closes, its leases stay.
                        await processes[process].close()
                        processes[process] = _store(url, clock)
                        generation[process] += 1
                    else:
                        clock.now += n
                live_before = {h for h, end in leases.items() if end > clock.now}
                results = await asyncio.gather(
                    *(processes[p].acquire(h, [claim]) for h, p in admits)
                )
                for (holder, _), refused in zip(admits, results, strict=True):
                    if refused is None:  # a holder admitted again has its lease renewed
                        leases[holder] = clock.now + LEASE_MS
                live = {h for h, end in leases.items() if end > clock.now}
                assert len(live) <= LIMIT
                new = {h for h, _ in admits} - live_before
                if len(live_before) + len(new) <= LIMIT:
                    assert live >= new, "refused although the limit had room"
                assert await processes[0].count("sessions", "") == len(live)
        finally:
            for store in processes:
                await store.close()

    asyncio.run(scenario())


async def test_a_release_while_the_acquisition_waits_is_not_lost(
    stores: Callable[..., RedisSlots],
) -> None:
    # The asker gave up (its CONNECT was cancelled) and released while its acquisition
    # was still on its way: once the acquisition is through, it is undone.
    store = stores()
    registry = RateLimitRegistry.start(store)
    try:
        granted = registry.ask(AcquireAll("gone", (IP, SESSIONS)), block=False)
        registry.tell(ReleaseAll("gone", (IP, SESSIONS)))
        assert await granted is None
        assert await store.counts() == {}
        assert store.held == {}
    finally:
        await registry.stop(block=False)


async def test_concurrent_admissions_share_round_trips_and_keep_their_order(
    stores: Callable[..., RedisSlots],
) -> None:
    store = stores()
    registry = RateLimitRegistry.start(store)
    try:
        cap = Claim("sessions", "", 40)
        asks = [registry.ask(AcquireAll(f"s{n}", (cap,)), block=False) for n in range(60)]
        replies = [await ask for ask in asks]
        # The first 40 asked are the 40 admitted: Redis ran them in the order asked.
        assert replies == [None] * 40 + [0] * 20
        assert store._batcher.pipelines < 60
        assert await store.count("sessions", "") == 40
    finally:
        await registry.stop(block=False)


async def test_the_batcher_loads_its_scripts_again_after_a_flush(
    redis_server: RedisServer,
) -> None:
    client = from_url(RedisBackend.from_url(redis_server.url()).url)
    batcher = Batcher(client)
    try:
        counter = batcher.register_script("return redis.call('INCR', KEYS[1])")
        key = f"batcher-{id(batcher)}"
        assert await counter(keys=[key]) == 1
        await client.script_flush()
        assert await counter(keys=[key]) == 2  # NOSCRIPT: loaded and run again
        values = await asyncio.gather(*(counter(keys=[key]) for _ in range(30)))
        assert values == list(range(3, 33))  # in the order called
        with pytest.raises(ResponseError):
            await batcher.register_script("return redis.call('NOPE')")(keys=[key])
        assert await counter(keys=[key]) == 33  # one failing script fails only its caller
    finally:
        await batcher.aclose()
