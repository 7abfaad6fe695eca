"""The scaling policy: how many workers a queue needs.

A pure function of what Redis says now (queued, running, busy), the pool's knobs and one
piece of carried state (``lower_since``). It does no I/O and reads no clock, so the operator
(Deployment replicas) and ``pipeq dev`` (local worker processes) share it and the unit tests
drive it with a table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The knobs' defaults, for both actuators: a WorkerPool's spec (builders.pool_settings; the
# CRD repeats them for the API server, and a unit test keeps it in step) and ``pipeq dev``
# (settings). Only the fewest workers differ: a pool scales to zero, ``pipeq dev`` keeps one.
#: seconds between two decisions when no enqueue signals one sooner
POLL_INTERVAL = 0.5
#: seconds a lower count must be wanted without a break before workers are removed
SCALE_DOWN_DELAY = 60.0
JOBS_PER_WORKER = 1
MAX_WORKERS = 4


@dataclass(frozen=True)
class Decision:
    #: the worker count to run now
    desired: int
    #: why, in words fit for an Event: "7 queued, 1 running"
    reason: str
    #: since when a count lower than ``current`` has been wanted (None: not wanted now).
    #: The caller keeps it and passes it back on its next call.
    lower_since: float | None
    #: the count the load asks for, before the scale-down delay (for status and metrics)
    target: int = 0


def decide(
    *,
    queued: int,
    running: int,
    busy: int,
    current: int,
    min_replicas: int,
    max_replicas: int,
    jobs_per_worker: int = JOBS_PER_WORKER,
    scale_down_delay: float = SCALE_DOWN_DELAY,
    paused: bool = False,
    now: float,
    lower_since: float | None = None,
    redis_reachable: bool = True,
) -> Decision:
    """The worker count to run now.

    Contract:

    - target = clamp(ceil((queued + running) / jobs_per_worker), min_replicas, max_replicas),
      then raised to ``busy`` if lower: a worker running a job is never asked to go, even
      when ``max_replicas`` was lowered under it.
    - target > current: ``desired = target`` at once (no delay on the way up).
    - target < current: ``desired = current`` until a lower target has been wanted without
      a break for ``scale_down_delay`` seconds (``lower_since`` records since when; pass the
      returned value back next time), then ``desired = target``. Any poll that wants
      ``current`` or more ends the wait.
    - ``paused``: ``desired = current``, nothing is carried.
    - ``redis_reachable=False`` (the counts are unknown): ``desired = current`` and the wait
      restarts afterwards: never scale down on blind counts. ``queued``/``running``/``busy``
      are ignored then.

    ``now`` and ``lower_since`` are seconds on any one clock (time.time() or monotonic).
    """
    if paused:
        return Decision(current, "paused", None, current)
    if not redis_reachable:
        return Decision(current, "Redis unreachable: holding", None, current)
    load = max(0, queued) + max(0, running)
    target = min(max(math.ceil(load / max(1, jobs_per_worker)), min_replicas), max_replicas)
    target = max(target, busy)
    why = f"{queued} queued, {running} running"
    if busy and target == busy and busy > math.ceil(load / max(1, jobs_per_worker)):
        why += f", {busy} busy"
    if target >= current:
        return Decision(target, why, None, target)
    since = now if lower_since is None else lower_since
    waited = now - since
    if waited >= scale_down_delay:
        return Decision(target, why, None, target)
    return Decision(current, f"{why}; {target} wanted in {scale_down_delay - waited:.0f}s", since, target)
