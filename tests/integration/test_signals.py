"""Enqueue signals on a real redis-server: an enqueue wakes the scalers of its queue only,
a Redis restart (signals lost meanwhile) wakes every scaler of that Redis, and the
subscriber stops with its last pool."""

from __future__ import annotations

import threading

from pipeq import queue
from pipeq.signals import Signals
from tests.support.waiting import wait_for


def enqueue(conn, name):
    import uuid

    return queue.enqueue_run(conn, name, uuid.uuid4().hex, {"reads": [], "reference": "r"}, meta={}, retries=0, ttl=60)


def subscribed(signals: Signals, url: str, *events: threading.Event) -> None:
    """Wait for the wake-up every pool gets once the subscription is made, then clear it."""
    wait_for(lambda: all(e.is_set() for e in events), timeout=10, what="the subscription's wake-up")
    for e in events:
        e.clear()


def test_an_enqueue_wakes_the_pools_of_its_queue_only(redis_server, conn):
    signals, a, a2, b = Signals(), threading.Event(), threading.Event(), threading.Event()
    signals.watch(redis_server.url, "qa", a)
    signals.watch(redis_server.url, "qa", a2)  # two pools on one queue
    signals.watch(redis_server.url, "qb", b)
    try:
        subscribed(signals, redis_server.url, a, a2, b)
        enqueue(conn, "qa")
        assert a.wait(5) and a2.wait(5)
        # qb's pool was not woken: the messages of one channel arrive in order, so a later
        # signal for qb shows that the one for qa was handled without waking it
        assert not b.is_set()
        enqueue(conn, "qb")
        assert b.wait(5)
    finally:
        for q, e in (("qa", a), ("qa", a2), ("qb", b)):
            signals.unwatch(redis_server.url, q, e)


def test_a_redis_restart_wakes_every_pool_and_signals_resume(redis_server, conn):
    signals, a = Signals(), threading.Event()
    signals.watch(redis_server.url, "qa", a)
    try:
        subscribed(signals, redis_server.url, a)
        redis_server.restart()
        # jobs enqueued while the subscriber was away are seen by the poll it triggers
        assert a.wait(15), "no wake-up after the subscriber reconnected"
        a.clear()
        c = queue.connect(redis_server.url)
        enqueue(c, "qa")
        c.close()
        assert a.wait(5)
    finally:
        signals.unwatch(redis_server.url, "qa", a)


def test_the_subscriber_stops_with_its_last_pool(redis_server, conn):
    def subscribers():
        return sum(1 for c in conn.client_list() if int(c.get("sub", 0)) > 0)

    # the earlier tests' subscribers stop within a second of their last pool
    wait_for(lambda: subscribers() == 0, timeout=5, what="no subscriber left by earlier tests")
    signals, a, b = Signals(), threading.Event(), threading.Event()
    signals.watch(redis_server.url, "qa", a)
    signals.watch(redis_server.url, "qb", b)
    subscribed(signals, redis_server.url, a, b)
    thread = signals._subscribers[redis_server.url].thread
    assert subscribers() == 1, "one subscription per Redis, not per pool"
    signals.unwatch(redis_server.url, "qb", b)
    assert thread.is_alive()
    signals.unwatch(redis_server.url, "qa", a)
    thread.join(5)
    assert not thread.is_alive()
    wait_for(lambda: subscribers() == 0, timeout=5, what="the subscription closed")
