"""The RQ task: run pipeline.sh for one job, report its progress, publish its results.

The pipeline runs under a guard process (``guard.py``) that leads a new process group, so
that a stop, a timeout or the death of the worker ends every process of the run. Output goes
to the job's ``pipeline.log``; ``PROGRESS`` lines (see ``pipeq.progress``) become the job's
``stage`` and ``progress``. Each attempt (:class:`Run`) works in a
:class:`pipeq.storage.base.Attempt` of the job's store: in the job's folder on the data
volume, or in local scratch with object storage (inputs copied in, the log uploaded every
few seconds). Its results are published only if the
attempt succeeded and this worker still holds the job's lease; an attempt that finds the
results already published (its predecessor published, then died before RQ recorded the job
as finished) returns them without running the pipeline again.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

import redis
import tenacity
from rq import get_current_job

from pipeq import progress, queue, retry
from pipeq.inputs import references
from pipeq.metrics_store import record_duration
from pipeq.settings import Settings, get_settings
from pipeq.storage import Store, Unavailable, open_store
from pipeq.worker import scratch
from pipeq.worker.lease import Lease, LeaseLost

GUARD = Path(__file__).with_name("guard.py")
STDERR_TAIL_LINES = 20


class PipelineFailed(Exception):
    """The pipeline ended without success; ``error`` is what the job's status shows."""

    def __init__(self, error: dict):
        super().__init__(f"{error['reason']}: {error['message']}")
        self.error = error


_stores: dict[str, Store] = {}


def store_of(settings: Settings) -> Store:
    """The worker's store (one client per process)."""
    if settings.storage not in _stores:
        _stores[settings.storage] = open_store(settings)
    return _stores[settings.storage]


class StoreOutage(Exception):
    """The job store stayed unreachable through a step's retries: the attempt ends and the job
    is retried (RQ requeues it, spending one of its retries), or fails when it has none left."""


def run_pipeline(reads: list[str], reference: str, sample: str | None = None, sources: dict[str, str] | None = None) -> dict:
    """Run the pipeline on the job's inputs; return ``{"files": [...], "summary": {...}}``.

    ``reads`` and ``reference`` name the inputs; those in ``sources`` (name → URL) were given
    by reference and are fetched from there, the others are the job's stored uploads.

    Raises PipelineFailed (and forfeits the job's retries: a pipeline that fails by itself
    fails again) on a non-zero exit, a timeout, a stop or a storage error that is not
    transient; StoreOutage (one retry spent) when the store stayed unreachable through a
    step's retries; LeaseLost when another attempt owns the job now. The worker gives the
    task its lease and its stop request on the job (``LeasedJob``); its Redis calls retry
    transient errors within the lease.
    """
    return Run(get_settings(), get_current_job()).run(reads, reference, sample, sources or {})


class Run:
    """One attempt of a job on this worker: from the job's record in Redis to its results.

    Every step that touches the job store goes through :meth:`stored`, the one place its
    errors are mapped: a transient outage (``Unavailable.transient``) is retried with
    ``pipeq.retry``'s backoff for up to ``storage_retry_seconds``, then spends one of the
    job's retries (StoreOutage); any other storage error fails the job as "storage error".
    """

    def __init__(self, settings: Settings, job):
        self.settings, self.job = settings, job
        self.lease: Lease | None = getattr(job, "lease", None)
        self.stop: threading.Event = getattr(job, "stop", None) or threading.Event()
        self.call = self.lease.retrying if self.lease is not None else _direct
        self.number = int(job.meta.get("attempt") or 0) + 1
        self.store = store_of(settings)

    def run(self, reads: list[str], reference: str, sample: str | None, sources: dict[str, str]) -> dict:
        job = self.job
        job.meta.update(attempt=self.number, stage="starting", progress=0, error=None)
        self.call(job.save_meta)
        found = self.stored("cannot reach the object store", _published, self.store, job.id, self.lease)
        if found is not None:
            # An earlier attempt published its results, then its worker died before RQ
            # recorded the job as finished: the results stand, and running the pipeline
            # again (hours, perhaps) would only redo them.
            return _done(job, found, self.call)
        if self.call(queue.stop_requested, job.connection, job.id):
            # stopped while no worker held the job (its worker had died): end it, run nothing
            self.fail("stopped", "stopped on request")
        attempt = self.stored("cannot start the attempt", self._open)
        try:
            return self._in(attempt, reads, reference, sample, sources)
        finally:
            try:
                attempt.close()
            except (OSError, Unavailable):
                pass  # the scratch is freed anyway; the next attempt's start frees it too

    def _open(self):
        store, job = self.store, self.job
        folder = scratch.claim(self.settings.scratch_dir, job.worker_name or str(os.getpid())) if store.uses_scratch else None
        return store.attempt(job.id, self.number, folder)

    def _in(self, attempt, reads: list[str], reference: str, sample: str | None, sources: dict[str, str]) -> dict:
        settings, job, lease = self.settings, self.job, self.lease
        self.stored("cannot fetch the inputs", self._fetch, attempt, [n for n in (*reads, reference) if n not in sources], sources)
        inputs, work, log = attempt.inputs, attempt.workdir, attempt.log
        cmd = [str(settings.pipeline), "--reference", str(inputs / reference)]
        for r in reads:
            cmd += ["--reads", str(inputs / r)]
        cmd += ["--outdir", str(work), "--threads", str(settings.threads)]
        if sample:
            cmd += ["--sample", sample]

        started = time.monotonic()
        self.stored("cannot write the job's log", log.write,
                    f"== attempt {self.number} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode())
        syncing = threading.Event()
        syncer = threading.Thread(target=_sync_log, args=(attempt, syncing, settings.log_upload_interval), name="log", daemon=True)
        syncer.start()
        try:
            rc, why, tail = _run(cmd, work, log, job, settings.pipeline_timeout, settings.kill_grace, self._ended())
        finally:
            syncing.set()
            syncer.join(timeout=30)
        if lease is not None and lease.lost.is_set():
            # Another attempt owns this job now (this one was presumed dead): publish nothing
            raise LeaseLost(job.id)
        with contextlib.suppress(redis.RedisError):
            record_duration(job.connection, time.monotonic() - started, "finished" if rc == 0 and not why else "failed")

        if why == "stopped":
            self.fail("stopped", "stopped on request", rc, tail)
        if why == "timeout":
            self.fail("timeout", f"the pipeline ran longer than {settings.pipeline_timeout} s and was killed", rc, tail)
        if rc != 0:
            last = tail[-1] if tail else ""
            self.fail("pipeline failed", f"pipeline.sh exited with code {rc}" + (f": {last}" if last else ""), rc, tail)

        found = self.stored("cannot publish the results", self._publish, attempt)
        if found is None:
            # Another attempt owns this job now (this one was presumed dead): publish nothing
            raise LeaseLost(job.id)
        return _done(job, found, self.call)

    def _fetch(self, attempt, stored_names: list[str], sources: dict[str, str]) -> None:
        attempt.fetch(stored_names)
        attempt.inputs.mkdir(parents=True, exist_ok=True)
        for name, url in sources.items():
            with open(attempt.inputs / name, "wb") as out:
                references.fetch(url, out, public=references.public_only(url, self.settings))

    def _publish(self, attempt) -> dict | None:
        """The published results, or None when the lease said no (nothing published)."""
        published = self.lease.publish(attempt) if self.lease is not None else attempt.publish(lambda: True)
        return self.store.published(self.job.id) if published else None

    def _ended(self):
        return self.stop if self.lease is None else _Either(self.stop, self.lease.lost)

    def stored(self, what: str, step, *args):
        """``step(*args)``, a step that touches the job store, with its errors mapped (see the
        class's docstring); ``what`` begins the job's error message if it fails."""
        ended = self._ended()
        deadline = time.time() + self.settings.storage_retry_seconds
        try:
            return retry.until(lambda: deadline, given_up=ended.is_set)(step, *args)
        except Unavailable as e:
            if self.lease is not None and self.lease.lost.is_set():
                raise LeaseLost(self.job.id) from e
            if not e.transient or ended.is_set():
                self.fail("storage error", f"{what}: {e}")
            self.record_error("storage error", f"{what}: the object store was unreachable for "
                                               f"{self.settings.storage_retry_seconds:g} s ({e})")
            raise StoreOutage(f"{what}: {e}") from e
        except OSError as e:
            self.fail("storage error", f"{what}: {e.strerror or e}")

    def record_error(self, reason: str, message: str, exit_code: int | None = None, tail: list[str] | None = None) -> dict:
        """Show ``error`` on the job (what its status says once it has failed)."""
        error = {"reason": reason, "message": message, "exit_code": exit_code, "stderr_tail": "\n".join(tail or [])}
        self.job.meta["error"] = error
        self.call(self.job.save_meta)
        return error

    def fail(self, reason: str, message: str, exit_code: int | None = None, tail: list[str] | None = None) -> NoReturn:
        """Fail the job for good: it would fail again, so its retries are forfeited."""
        error = self.record_error(reason, message, exit_code, tail)
        self.job.retries_left = 0
        raise PipelineFailed(error)


def _direct(call, *args, **kwargs):
    return call(*args, **kwargs)


def _published(store: Store, job_id: str, lease: Lease | None) -> dict | None:
    """The results an earlier attempt published, if any. One that recorded its publication
    may still be moving them into place (or have died doing so): wait up to a lease for them."""
    found = store.published(job_id)
    if found is not None or lease is None or lease.publication() is None:
        return found
    waiting = tenacity.Retrying(retry=tenacity.retry_if_result(lambda r: r is None), stop=tenacity.stop_after_delay(lease.seconds),
                                wait=tenacity.wait_fixed(0.2), retry_error_callback=lambda state: None)
    return waiting(store.published, job_id)


class _Either:
    """Set when either event is: the task's view of "this attempt must end"."""

    def __init__(self, *events: threading.Event):
        self.events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


def _sync_log(attempt, stop: threading.Event, interval: float) -> None:
    """Upload the log every ``interval`` seconds while the pipeline runs (best effort: the
    last upload, when the attempt closes, is the one that must get through)."""
    while not stop.wait(interval):
        try:
            attempt.sync_log()
        except (OSError, Unavailable):
            pass


def _done(job, result: dict, call=_direct) -> dict:
    """The job's result, from what its attempt published."""
    job.meta.update(stage="done", progress=100)
    call(job.save_meta)
    return result


def _run(cmd, cwd, log, job, timeout: float, grace: float, stop) -> tuple[int, str | None, list[str]]:
    """Run ``cmd`` under the guard until it ends, ``timeout`` passes or ``stop`` is set;
    return (exit code, "timeout"/"stopped"/None, stderr tail)."""
    proc = subprocess.Popen(
        [sys.executable, "-S", str(GUARD), str(grace), "--", *cmd],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    latest: list[progress.Progress | None] = [None]
    lock = threading.Lock()

    def pump(stream, is_stderr: bool):
        for raw in iter(stream.readline, b""):
            with lock:
                try:
                    log.write(raw)
                except OSError:
                    pass  # a full disk must not stall the pipeline on a full pipe
            line = raw.decode(errors="replace").rstrip("\n")
            if is_stderr:
                tail.append(line)
            elif (p := progress.parse(line)) is not None:
                latest[0] = p

    readers = [threading.Thread(target=pump, args=(proc.stdout, False), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, True), daemon=True)]
    for t in readers:
        t.start()

    deadline = time.monotonic() + timeout
    shown = None
    why = None
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                pass
            if latest[0] is not None and latest[0] != shown:
                shown = latest[0]
                _show(job, shown)
            if stop.is_set():
                why = "stopped"
            elif time.monotonic() > deadline:
                why = "timeout"
            if why:
                rc = _kill(proc, grace)
                break
    except BaseException:
        # the worker is being torn down (a second SIGTERM): take the pipeline with it
        _kill(proc, grace)
        raise
    for t in readers:
        t.join(timeout=5)
    if latest[0] is not None and latest[0] != shown:
        _show(job, latest[0])
    return rc, why, list(tail)


def _show(job, p: progress.Progress) -> None:
    job.meta.update(stage=p.stage, progress=p.percent)
    try:
        job.save_meta()
    except Exception:  # progress is best effort; Redis may be restarting
        pass


def _kill(proc: subprocess.Popen, grace: float) -> int:
    """End the guard's whole process group: TERM, then KILL after ``grace``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace + 2)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.wait()
