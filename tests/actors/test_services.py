"""`Services`: the bundle of shared actors a server starts once."""

from __future__ import annotations

from aiowt.actors import MetricsCollector, RateLimitRegistry, Services, SessionRegistry, ask
from aiowt.actors.metrics import Inc, TakeSnapshot


async def test_the_bundle_starts_each_service_once_and_stops_them() -> None:
    services = Services.start()
    assert services.metrics.actor_class is MetricsCollector
    assert services.rate_limits.actor_class is RateLimitRegistry
    assert services.sessions.actor_class is SessionRegistry
    services.metrics.tell(Inc("app_hits_total"))
    assert (await ask(services.metrics, TakeSnapshot())).value("app_hits_total") == 1
    await services.stop()
    assert not any(
        ref.is_alive() for ref in (services.metrics, services.rate_limits, services.sessions)
    )
    await services.stop()  # a stopped bundle stops quietly


async def test_a_bundle_whose_service_died_still_stops_the_others() -> None:
    services = Services.start()
    await services.rate_limits.stop(block=False)
    await services.stop()
    assert not services.metrics.is_alive()
    assert not services.sessions.is_alive()
