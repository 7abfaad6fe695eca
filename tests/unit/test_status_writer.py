"""The operator's status writer: off the decision path, newest status first, no write when
nothing changed, a failed write tried again at the next submission.

The API server is stood in by a recorder of the one call the writer makes (the cluster
tests run it against a real one); what is tested here is the writer's own bookkeeping."""

from __future__ import annotations

import threading

from pipeq.operator.status import StatusWriter

POOL = ("ns", "pool")


class ApiException(Exception):
    def __init__(self, status: int, reason: str = "") -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class Recorder:
    """``kube`` as the writer sees it: ``custom.patch_namespaced_custom_object_status``."""

    ApiException = ApiException

    def __init__(self) -> None:
        self.custom = self
        self.written: list[dict] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next: Exception | None = None

    def patch_namespaced_custom_object_status(self, group, version, namespace, plural, name, body):
        self.entered.set()
        self.gate.wait(10)
        if self.fail_next is not None:
            e, self.fail_next = self.fail_next, None
            raise e
        self.written.append(body["status"])


def settle(w: StatusWriter, status: dict) -> None:
    """Submit ``status`` and wait until the writer has done with it."""
    w.submit(POOL, status)
    assert w.idle(5)


def test_an_unchanged_status_is_written_once():
    kube = Recorder()
    w = StatusWriter(kube)
    settle(w, {"queued": 1})
    settle(w, {"queued": 1})
    assert kube.written == [{"queued": 1}]


def test_submit_never_waits_and_the_newest_status_replaces_pending_ones():
    kube = Recorder()
    kube.gate.clear()  # the API server hangs on the first write
    w = StatusWriter(kube)
    w.submit(POOL, {"queued": 1})
    assert kube.entered.wait(5)
    for n in (2, 3, 4):  # returns at once although a write is in flight
        w.submit(POOL, {"queued": n})
    kube.gate.set()
    assert w.idle(5)
    assert kube.written == [{"queued": 1}, {"queued": 4}]


def test_a_failed_write_is_tried_again_at_the_next_submission():
    kube = Recorder()
    w = StatusWriter(kube)
    kube.fail_next = ApiException(500, "Internal Server Error")
    settle(w, {"queued": 1})
    assert kube.written == []
    kube.fail_next = OSError("connection reset")  # not an API answer: the thread lives on
    settle(w, {"queued": 1})
    settle(w, {"queued": 1})
    assert kube.written == [{"queued": 1}]


def test_a_forgotten_pool_is_written_again_from_scratch():
    kube = Recorder()
    w = StatusWriter(kube)
    settle(w, {"queued": 0})
    w.forget(POOL)  # the pool went; one of the same name may come back
    settle(w, {"queued": 0})
    assert kube.written == [{"queued": 0}, {"queued": 0}]
