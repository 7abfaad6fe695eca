"""The pools' status writes, off the scalers' decision path.

A scaler hands the status it computed to ``StatusWriter.submit`` and goes on deciding: its
next scale never waits for a status PATCH (an etcd write, tens of milliseconds on a busy
disk), so a burst whose later enqueues arrive while a status is being written is scaled
at once. One thread writes for every pool of the operator, the newest status of a pool
replacing one not yet sent, and only what differs from the last status written (no API
request when nothing changed). A failed write is forgotten, so the next submission of the
same status writes it again.
"""

from __future__ import annotations

import logging
import threading

from pipeq.operator.kube import GROUP, PLURAL, VERSION, Kube

log = logging.getLogger("pipeq.operator.status")

Pool = tuple[str, str]  # (namespace, name)


class StatusWriter:
    """Writes the status subresource of pools, one request at a time, newest status first."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._pending: dict[Pool, dict] = {}  # in the order pools first asked
        self._written: dict[Pool, dict] = {}
        self._writing: Pool | None = None
        self._forgotten = False  # the pool being written went meanwhile
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, pool: Pool, status: dict) -> None:
        """Have ``status`` written as the pool's status soon, unless it is already (or is
        about to be). Never blocks on the API server."""
        with self._cond:
            if pool in self._pending:
                self._pending[pool] = status
                return
            if self._written.get(pool) == status:
                return
            self._pending[pool] = status
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="pool status", daemon=True)
                self._thread.start()
            self._cond.notify()

    def forget(self, pool: Pool) -> None:
        """The pool is gone: nothing more to write for it."""
        with self._cond:
            self._pending.pop(pool, None)
            self._written.pop(pool, None)
            self._forgotten = self._forgotten or pool == self._writing

    def idle(self, timeout: float) -> bool:
        """Wait until nothing is pending or being written (for tests); True if so."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and self._writing is None, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending)
                pool = next(iter(self._pending))
                status = self._pending.pop(pool)
                self._writing, self._forgotten = pool, False
            written = self._write(pool, status)
            with self._cond:
                if written and not self._forgotten:
                    self._written[pool] = status
                else:
                    self._written.pop(pool, None)
                self._writing = None
                self._cond.notify_all()

    def _write(self, pool: Pool, status: dict) -> bool:
        namespace, name = pool
        try:
            self.kube.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": status})
            return True
        except self.kube.ApiException as e:
            if e.status != 404:  # a pool that just went is no matter
                log.warning("writing the status of %s/%s: %s", namespace, name, e.reason)
        except Exception as e:  # the thread writes for every pool: it must not end
            log.warning("writing the status of %s/%s: %s", namespace, name, e)
        return False
