"""The order in which a scheduling cycle considers queued jobs: fair share
between buyer organisations, priority and ageing within them.

**Fair share (dominant resource fairness).** An organisation's share of a
compute class is the NCU its leases hold now divided by the NCU the market
offers in that class; its *dominant share* is the largest of those (Ghodsi
et al., "Dominant Resource Fairness", NSDI 2011). The cycle always takes the
next job from the organisation with the lowest dominant share, and every
placement raises that organisation's share at once (progressive filling), so
an organisation with 10,000 queued jobs gets its second placement only after
every other organisation with a share of zero has had its first: one job of
another organisation is never starved by a flood.

**Ageing.** A job's age factor a is its waiting time over
``MatchingConfig.ageing_horizon``, capped at 1. Within an organisation jobs go
in order of priority + a × ``ageing_priority_points`` (then submission time,
then id); across organisations the share compared is the dominant share ×
(1 − a × ``ageing_share_discount``) of the organisation's next job, so a job
that has waited long rises even against organisations that hold a little less
(a share of zero stays zero: ageing never overtakes an organisation that has
nothing).

Everything is deterministic: ties are broken by ids.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime

from marketplace.domain.units import ComputeClass
from scheduler.domain.demand import JobSpec, MatchingConfig


def age_factor(job: JobSpec, now: datetime, config: MatchingConfig) -> float:
    horizon = config.ageing_horizon.total_seconds()
    if horizon <= 0:
        return 1.0
    waited = (now - job.submitted_at).total_seconds()
    return min(max(waited / horizon, 0.0), 1.0)


def effective_priority(job: JobSpec, now: datetime, config: MatchingConfig) -> float:
    return job.priority + age_factor(job, now, config) * config.ageing_priority_points


class FairShareQueue:
    """Queued jobs handed out one at a time in fair-share order.

    Iterate it; after each job, call :meth:`charge` if the job got capacity
    (and :meth:`refund` when a lease of some organisation is preempted), and
    the next job handed out already reflects the new shares.
    """

    def __init__(
        self,
        jobs: Iterable[JobSpec],
        *,
        now: datetime,
        capacity: Mapping[ComputeClass, float],
        usage: Mapping[str, Mapping[ComputeClass, float]] | None = None,
        config: MatchingConfig | None = None,
    ) -> None:
        self.now = now
        self.config = config or MatchingConfig()
        self.capacity = {cls: float(v) for cls, v in capacity.items() if v > 0}
        self.usage: dict[str, dict[ComputeClass, float]] = {
            org: {cls: float(v) for cls, v in held.items()} for org, held in (usage or {}).items()
        }
        by_org: dict[str, list[tuple[tuple[float, datetime, str], JobSpec]]] = {}
        self._age: dict[str, float] = {}
        for job in jobs:
            age = self._age[job.job_id] = age_factor(job, now, self.config)
            key = (-(job.priority + age * self.config.ageing_priority_points), job.submitted_at, job.job_id)
            by_org.setdefault(job.org_id, []).append((key, job))
        self._jobs = {org: [job for _, job in sorted(entries, key=lambda e: e[0])] for org, entries in by_org.items()}
        self._next = dict.fromkeys(self._jobs, 0)
        self._version = dict.fromkeys(self._jobs, 0)
        self._heap: list[tuple[tuple[float, float, datetime, str, str], int, str]] = []
        for org in sorted(self._jobs):
            self._push(org)

    def dominant_share(self, org_id: str) -> float:
        held = self.usage.get(org_id, {})
        return max((held.get(cls, 0.0) / total for cls, total in self.capacity.items()), default=0.0)

    def charge(self, org_id: str, compute_class: ComputeClass, ncu: float) -> None:
        held = self.usage.setdefault(org_id, {})
        held[compute_class] = held.get(compute_class, 0.0) + float(ncu)
        self._push(org_id)

    def refund(self, org_id: str, compute_class: ComputeClass, ncu: float) -> None:
        held = self.usage.setdefault(org_id, {})
        held[compute_class] = max(0.0, held.get(compute_class, 0.0) - float(ncu))
        self._push(org_id)

    def _push(self, org_id: str) -> None:
        jobs = self._jobs.get(org_id)
        if jobs is None or self._next[org_id] >= len(jobs):
            return
        head = jobs[self._next[org_id]]
        age = self._age[head.job_id]
        share = self.dominant_share(org_id) * (1.0 - age * self.config.ageing_share_discount)
        priority = head.priority + age * self.config.ageing_priority_points
        key = (share, -priority, head.submitted_at, head.job_id, org_id)
        self._version[org_id] += 1
        heapq.heappush(self._heap, (key, self._version[org_id], org_id))

    def __iter__(self) -> Iterator[JobSpec]:
        while self._heap:
            _, version, org_id = heapq.heappop(self._heap)
            if version != self._version[org_id]:
                continue  # stale: the organisation's share or head changed since
            job = self._jobs[org_id][self._next[org_id]]
            self._next[org_id] += 1
            yield job
            self._push(org_id)
