"""Which instance gets the next task: least outstanding requests, within each instance's limit.

`choose` is the pure rule. `Balancer` holds this router process's counts (outstanding and assigned
per instance) and the waiters of each service, first come first served: a task waits for a free
slot rather than piling onto a busy instance, and the wait is bounded by the task's deadline and,
when no instance is healthy at all, by `no_instance_wait`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from services.proxy.registry import Instance, Registry


class NoHealthyInstance(RuntimeError):
    """No instance of the service was healthy for `no_instance_wait` seconds."""

    retryable = False


class DeadlinePassed(RuntimeError):
    """The task's deadline passed while it waited for a free slot."""

    retryable = False


@dataclass(frozen=True)
class Candidate:
    instance_id: str
    outstanding: int
    limit: int
    assigned: int = 0


def choose(candidates: Sequence[Candidate], exclude: Collection[str] = ()) -> str | None:
    """The instance with the fewest outstanding requests that has a free slot, or None.

    Instances in `exclude` (already tried for this task) are taken only if no other has a slot.
    Ties go to the instance assigned fewest tasks so far, then to the smaller id: under uniform
    load every instance gets the same share.
    """
    free = [c for c in candidates if c.outstanding < c.limit]
    fresh = [c for c in free if c.instance_id not in exclude] or free
    if not fresh:
        return None
    return min(fresh, key=lambda c: (c.outstanding, c.assigned, c.instance_id)).instance_id


@dataclass
class _Waiter:
    future: asyncio.Future[Instance]
    exclude: frozenset[str]


class Balancer:
    def __init__(self, registry: Callable[[], Registry], default_limit: int) -> None:
        self.registry = registry
        self.default_limit = default_limit
        self.outstanding: Counter[str] = Counter()
        self.assigned: Counter[str] = Counter()
        self.suspects: set[str] = set()  # failed a call; no tasks until a health check clears them
        self.waiters: defaultdict[int, deque[_Waiter]] = defaultdict(deque)

    def limit(self, instance: Instance) -> int:
        declared = instance.description.max_concurrency if instance.description else None
        return declared if declared and declared > 0 else self.default_limit

    def usable(self, service_id: int) -> list[Instance]:
        return [i for i in self.registry().healthy(service_id) if i.instance_id not in self.suspects]

    def _take(self, service_id: int, exclude: Collection[str]) -> Instance | None:
        usable = {i.instance_id: i for i in self.usable(service_id)}
        chosen = choose([Candidate(i.instance_id, self.outstanding[i.instance_id], self.limit(i),
                                   self.assigned[i.instance_id]) for i in usable.values()], exclude)
        if chosen is None:
            return None
        self.outstanding[chosen] += 1
        self.assigned[chosen] += 1
        return usable[chosen]

    def _grant(self, service_id: int) -> None:
        queue = self.waiters.get(service_id)
        while queue:
            waiter = queue[0]
            if waiter.future.done():
                queue.popleft()
                continue
            instance = self._take(service_id, waiter.exclude)
            if instance is None:
                return
            queue.popleft()
            waiter.future.set_result(instance)

    async def acquire(self, service_id: int, exclude: Collection[str], deadline: float,
                      no_instance_wait: float) -> Instance:
        """A slot on an instance of the service (release it with `release`). `deadline` is monotonic."""
        if not self.waiters.get(service_id):  # never overtake tasks that wait already
            instance = self._take(service_id, exclude)
            if instance is not None:
                return instance
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), frozenset(exclude))
        self.waiters[service_id].append(waiter)
        self._grant(service_id)  # waiters ahead of it may have gone (deadline, cancellation)
        unhealthy_since: float | None = None
        try:
            while True:
                now = time.monotonic()
                timeout = min(1.0, deadline - now)
                if self.usable(service_id):
                    unhealthy_since = None
                else:
                    unhealthy_since = unhealthy_since or now
                    left = unhealthy_since + no_instance_wait - now
                    if left <= 0:
                        raise NoHealthyInstance(f"no healthy instance of service {service_id}")
                    timeout = min(timeout, left)
                if timeout <= 0:
                    raise DeadlinePassed(f"no slot on an instance of service {service_id} before the deadline")
                try:
                    return await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
                except TimeoutError:
                    self._grant(service_id)  # instances may have come up without a release
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(waiter.future.result().instance_id, service_id)
            else:
                waiter.future.cancel()
            raise

    def release(self, instance_id: str, service_id: int) -> None:
        self.outstanding[instance_id] -= 1
        if self.outstanding[instance_id] <= 0:
            del self.outstanding[instance_id]
        self._grant(service_id)

    def suspect(self, instance_id: str) -> None:
        self.suspects.add(instance_id)

    def clear(self, instance_id: str) -> None:
        if instance_id in self.suspects:
            self.suspects.discard(instance_id)
            self.changed()

    def changed(self) -> None:
        """The registry changed (an instance came, went, came back): hand free slots to waiters."""
        for service_id in list(self.waiters):
            self._grant(service_id)
            if not self.waiters[service_id]:
                del self.waiters[service_id]

    def shares(self) -> dict[str, int]:
        return dict(self.assigned)
