"""Enqueue signals: an autoscaler (the operator's pool scalers, `pipeq dev`'s supervisor) wakes
the moment a job enters its queue.

``pipeq.queue.enqueue_run`` publishes the queue's name on ``keys.ENQUEUED_CHANNEL`` in the
enqueue's own transaction. Here one subscriber thread per Redis URL (not per pool: every
pool on that Redis shares it) sets the ``threading.Event`` of each pool of that queue.

Nothing depends on a signal arriving: the scalers still poll every pollIntervalSeconds,
so a signal lost (Redis restarting, the subscriber reconnecting, an enqueue by plain RQ)
costs at most one interval. After every (re)subscription every pool of that Redis is woken,
since signals may have been missed meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict

import redis

from pipeq import keys, queue

#: seconds between attempts to reach a Redis that does not answer
RECONNECT_SECONDS = 1.0
#: how often a subscriber looks whether it still has pools (it stops when it has none)
IDLE_CHECK_SECONDS = 1.0

log = logging.getLogger("pipeq.signals")


class Subscriber:
    """One Redis URL's subscription to the enqueue channel, and the pools waiting on it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.waiters: dict[str, set[threading.Event]] = defaultdict(set)  # queue → wake events
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"signals {url}", daemon=True)
        self.received = 0

    def _wake(self, queue_name: str | None) -> None:
        with self.lock:
            events = [e for q, es in self.waiters.items() if queue_name in (None, q) for e in es]
        for e in events:
            e.set()

    def _empty(self) -> bool:
        with self.lock:
            return not any(self.waiters.values())

    def _run(self) -> None:
        while not self._empty():
            conn = queue.connect(self.url, timeout=10.0)
            pubsub = conn.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(keys.ENQUEUED_CHANNEL)
                self._wake(None)  # whatever was enqueued while we were not subscribed
                while not self._empty():
                    msg = pubsub.get_message(timeout=IDLE_CHECK_SECONDS)
                    if msg is not None and msg["type"] == "message":
                        self.received += 1
                        self._wake(msg["data"].decode(errors="replace"))
            except (redis.RedisError, OSError) as e:
                log.debug("enqueue signals of %s: %s; polling only until it answers", self.url, e)
                threading.Event().wait(RECONNECT_SECONDS)
            finally:
                pubsub.close()
                conn.close()


class Signals:
    """The operator's subscribers, by Redis URL; started by the first pool that waits on a
    URL, stopped within IDLE_CHECK_SECONDS after its last pool goes."""

    def __init__(self) -> None:
        self._subscribers: dict[str, Subscriber] = {}
        self._lock = threading.Lock()

    def watch(self, url: str, queue_name: str, event: threading.Event) -> None:
        """Set ``event`` whenever a job is enqueued on ``queue_name`` in the Redis at ``url``."""
        with self._lock:
            sub = self._subscribers.get(url)
            if sub is None or not sub.thread.is_alive():
                sub = self._subscribers[url] = Subscriber(url)
                start = True
            else:
                start = False
            with sub.lock:
                sub.waiters[queue_name].add(event)
            if start:
                sub.thread.start()

    def unwatch(self, url: str, queue_name: str, event: threading.Event) -> None:
        with self._lock:
            sub = self._subscribers.get(url)
            if sub is None:
                return
            with sub.lock:
                sub.waiters[queue_name].discard(event)
                if not sub.waiters[queue_name]:
                    del sub.waiters[queue_name]
                empty = not sub.waiters
            if empty:
                del self._subscribers[url]
