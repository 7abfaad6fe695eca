"""The scaling policy: how many workers a queue needs. A pure function, shared by the
operator (Deployment replicas) and ``pipeq dev`` (local worker processes)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str
    #: since when a lower count than ``current`` has been wanted (None: not wanted now)
    lower_since: float | None


def decide(
    *,
    queued: int,
    running: int,
    busy: int,
    current: int,
    min_replicas: int,
    max_replicas: int,
    jobs_per_worker: int = 1,
    scale_down_delay: float = 60.0,
    paused: bool = False,
    now: float,
    lower_since: float | None = None,
    redis_reachable: bool = True,
) -> Decision:
    """The worker count to run now.

    target = clamp(ceil((queued + running) / jobs_per_worker), min_replicas, max_replicas),
    never below ``busy`` (a busy worker is never removed). A higher target applies at once;
    a lower one only after it has been wanted for ``scale_down_delay`` seconds (``lower_since``
    carries that time between calls: pass back the returned value). ``paused`` or an
    unreachable Redis hold ``current``.
    """
    if paused:
        return Decision(current, "paused", None)
    if not redis_reachable:
        return Decision(current, "Redis unreachable: holding", lower_since)
    load = queued + running
    target = min(max(math.ceil(load / max(1, jobs_per_worker)), min_replicas), max_replicas)
    target = max(target, busy)  # even above max_replicas: a busy worker is never removed
    why = f"{queued} queued, {running} running"
    if target > current:
        return Decision(target, why, None)
    if target == current:
        return Decision(current, why, None)
    since = now if lower_since is None else lower_since
    if now - since >= scale_down_delay:
        return Decision(target, why, None)
    return Decision(current, f"{why}; {target} wanted, waiting {scale_down_delay - (now - since):.0f}s more", since)
