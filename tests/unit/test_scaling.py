"""The scaling policy, table-driven: one row per rule of pipeq.scaling.decide's contract."""

from __future__ import annotations

import pytest

from pipeq.scaling import decide

BASE = dict(queued=0, running=0, busy=0, current=1, min_replicas=0, max_replicas=10,
            jobs_per_worker=1, scale_down_delay=60.0, paused=False, now=1000.0,
            lower_since=None, redis_reachable=True)

# (id, overrides, desired, lower_since)
CASES = [
    ("up at once", dict(queued=7, running=1, current=1), 8, None),
    ("up clamped to max", dict(queued=50, current=1), 10, None),
    ("jobs per worker rounds up", dict(queued=5, jobs_per_worker=2, current=0), 3, None),
    ("min floor", dict(min_replicas=2, current=2), 2, None),
    ("min raises at once", dict(min_replicas=3, current=1), 3, None),
    ("steady", dict(queued=0, running=1, current=1), 1, None),
    ("down waits: first lower poll starts the clock", dict(current=4, running=1), 4, 1000.0),
    ("down waits: clock carried", dict(current=4, running=1, lower_since=950.0), 4, 950.0),
    ("down after the delay", dict(current=4, running=1, lower_since=940.0), 1, None),
    ("down exactly at the delay", dict(current=4, running=1, lower_since=940.0, now=1000.0), 1, None),
    ("zero delay scales down at once", dict(current=4, scale_down_delay=0), 0, None),
    ("scale to zero", dict(current=3, lower_since=0.0), 0, None),
    ("min 0 stays 0 when idle", dict(current=0), 0, None),
    ("from zero on the first job", dict(current=0, queued=1), 1, None),
    ("busy floor on scale-down", dict(current=4, busy=3, running=3, lower_since=0.0), 3, None),
    ("busy floor above max", dict(current=5, busy=5, running=5, max_replicas=2, lower_since=0.0), 5, None),
    ("busy floor with jobs per worker", dict(current=4, busy=3, running=3, jobs_per_worker=3, lower_since=0.0), 3, None),
    ("higher load resets the wait", dict(current=4, queued=4, lower_since=0.0), 4, None),
    ("paused holds up", dict(paused=True, queued=9, current=1), 1, None),
    ("paused holds down", dict(paused=True, current=4, lower_since=0.0), 4, None),
    ("redis down holds", dict(redis_reachable=False, current=4, lower_since=0.0), 4, None),
    ("redis down ignores stale counts", dict(redis_reachable=False, queued=9, current=2), 2, None),
    ("max lowered under idle workers waits too", dict(current=8, max_replicas=3, queued=20), 8, 1000.0),
]


@pytest.mark.parametrize("over,desired,since", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(over, desired, since):
    d = decide(**{**BASE, **over})
    assert (d.desired, d.lower_since) == (desired, since), d


def test_reason_reads_like_an_event():
    d = decide(**{**BASE, "queued": 7, "running": 1, "current": 1})
    assert d.reason == "7 queued, 1 running"
    assert d.target == 8
    waiting = decide(**{**BASE, "current": 4})
    assert waiting.reason.startswith("0 queued, 0 running; 0 wanted in 60s")
    assert waiting.target == 0
    assert "busy" in decide(**{**BASE, "current": 4, "busy": 2, "lower_since": 0.0}).reason
    assert decide(**{**BASE, "redis_reachable": False}).reason.startswith("Redis unreachable")


def test_a_sequence_of_polls():
    """A burst, its jobs finishing, then quiet: up at once, down once the delay has held."""
    state, current, seen = None, 1, []
    for t, queued, running in [(0, 6, 0), (1, 2, 4), (5, 0, 2), (30, 0, 0), (60, 0, 0), (66, 0, 0)]:
        d = decide(**{**BASE, "queued": queued, "running": running, "current": current,
                      "now": float(t), "lower_since": state, "scale_down_delay": 30.0})
        state, current = d.lower_since, d.desired
        seen.append(current)
    assert seen == [6, 6, 6, 6, 0, 0]
