"""The operator while Redis stalls, through a real fault injector: a pool whose Redis is
behind toxiproxy, two busy workers, then a blackhole (replies never come) longer than the
operator's Redis timeout. The operator must hold the replicas it has (never scale down
blind, nor to zero), and scale again by itself once replies come back.

Uses the ``pools`` fixture (the real control plane, the process node and the operator)
and the toxiproxy fixtures of tests/reliability/conftest.py."""

from __future__ import annotations

import time

import pytest

from tests.support.cluster import wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.cluster]


def test_operator_holds_replicas_while_redis_stalls_and_recovers(pools, redis_proxy):
    # the pool, its workers and so its operator poll reach Redis through the proxy
    pools.create(redis_url=redis_proxy.url, maxReplicas=3,
                 scaling={"pollIntervalSeconds": 0.2, "scaleDownDelaySeconds": 0})
    busy = pools.enqueue(30, n=2)
    wait_for(lambda: pools.replicas() == 2 and [pools.status(j) for j in busy] == ["started"] * 2,
             timeout=60, interval=0.3, what="two busy workers")

    seen = []
    with redis_proxy.toxic("timeout", stream="downstream", timeout=0):
        wait_for(lambda: pools.condition("RedisReachable") == "False", timeout=20, interval=0.3,
                 what="the operator to see Redis gone")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            seen.append(pools.replicas())
            time.sleep(0.2)
    print(f"\nreplicas while Redis stalled: {sorted(set(seen))} over {len(seen)} reads")
    assert set(seen) == {2}, seen  # held: neither scaled down blind nor up

    # recovers by itself: a new job is seen and scaled for
    more = pools.enqueue(2, n=1)
    wait_for(lambda: pools.replicas() == 3, timeout=30, interval=0.3, what="a scale-up after the stall")
    wait_for(lambda: pools.condition("RedisReachable") == "True", timeout=20, what="RedisReachable=True again")
    wait_for(lambda: all(pools.status(j) == "finished" for j in busy + more), timeout=90, interval=0.5,
             what="every job to finish")
