"""Least outstanding requests within each instance's limit, first come first served."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime

import pytest

from events.services import Description
from services.proxy.balancer import Balancer, Candidate, DeadlinePassed, NoHealthyInstance, choose
from services.proxy.registry import DOWN, Instance, Registry, Service

NOW = datetime(2026, 1, 31, tzinfo=UTC)


def test_choose_least_outstanding_with_a_free_slot() -> None:
    candidates = [Candidate("a", 3, 4), Candidate("b", 1, 4), Candidate("c", 0, 0)]
    assert choose(candidates) == "b"
    assert choose([Candidate("a", 4, 4)]) is None


def test_choose_prefers_untried_instances_but_falls_back_to_them() -> None:
    assert choose([Candidate("a", 0, 4), Candidate("b", 2, 4)], exclude={"a"}) == "b"
    assert choose([Candidate("a", 0, 4), Candidate("b", 4, 4)], exclude={"a"}) == "a"


def test_ties_go_to_the_instance_assigned_fewest_so_shares_even_out() -> None:
    shares: Counter[str] = Counter()
    for _ in range(300):  # one at a time: outstanding always 0, so only the tie-break decides
        chosen = choose([Candidate(n, 0, 8, shares[n]) for n in ("a", "b", "c")])
        assert chosen is not None
        shares[chosen] += 1
    assert set(shares.values()) == {100}


def registry(*names: str, limit: int | None = None, down: tuple[str, ...] = ()) -> Registry:
    reg = Registry(services={0: Service(service_id=0, name="echo")})
    for name in names:
        reg.instances[name] = Instance(instance_id=name, url=f"http://{name}", service_id=0,
                                       state=DOWN if name in down else "up",
                                       description=Description(name="echo", max_concurrency=limit),
                                       registered_at=NOW, changed_at=NOW)
    return reg


async def test_acquire_waits_for_a_slot_in_arrival_order() -> None:
    reg = registry("a", limit=1)
    balancer = Balancer(lambda: reg, default_limit=8)
    deadline = time.monotonic() + 5
    first = await balancer.acquire(0, (), deadline, 1.0)
    order: list[int] = []

    async def waiter(n: int) -> None:
        instance = await balancer.acquire(0, (), deadline, 1.0)
        order.append(n)
        await asyncio.sleep(0)
        balancer.release(instance.instance_id, 0)

    waiters = [asyncio.ensure_future(waiter(n)) for n in range(3)]
    await asyncio.sleep(0.01)
    assert order == [] and balancer.outstanding["a"] == 1
    balancer.release(first.instance_id, 0)
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2] and balancer.outstanding["a"] == 0


async def test_no_healthy_instance_fails_after_the_grace_and_a_recovery_is_picked_up() -> None:
    reg = registry("a", down=("a",))
    balancer = Balancer(lambda: reg, default_limit=8)
    started = time.monotonic()
    with pytest.raises(NoHealthyInstance):
        await balancer.acquire(0, (), started + 5, 0.2)
    assert 0.15 < time.monotonic() - started < 2

    pending = asyncio.ensure_future(balancer.acquire(0, (), time.monotonic() + 5, 3.0))
    await asyncio.sleep(0.05)
    reg.instances["a"].state = "up"
    balancer.changed()
    assert (await asyncio.wait_for(pending, 1)).instance_id == "a"


async def test_suspects_get_no_tasks_and_the_deadline_bounds_the_wait() -> None:
    reg = registry("a", "b", limit=1)
    balancer = Balancer(lambda: reg, default_limit=8)
    balancer.suspect("a")
    assert (await balancer.acquire(0, (), time.monotonic() + 1, 1.0)).instance_id == "b"
    with pytest.raises(DeadlinePassed):
        await balancer.acquire(0, (), time.monotonic() + 0.1, 5.0)  # b is busy, a is suspect
    balancer.clear("a")
    assert (await balancer.acquire(0, (), time.monotonic() + 1, 1.0)).instance_id == "a"
