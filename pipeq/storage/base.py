"""The job store's interface and its errors, shared by both backends.

What each side needs:

- the API stages a submission's inputs (:meth:`Store.staging`: large uploads stream in as
  they arrive, small ones are written once checked), and reads the log and results;
- a worker opens an :class:`Attempt`: where the inputs are, where the pipeline writes, the
  log, and :meth:`Attempt.publish`, which makes the results the job's;
- workers prune what expired (:meth:`Store.prune`).

Any failure to reach the store raises :class:`Unavailable` (the API answers 503; a worker
retries a transient one once after a backoff); a missing object raises :class:`NotFound`,
which is a ``FileNotFoundError``. The file backend's own errors stay ``OSError`` (a full
disk is a 507, not a 503).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

#: Codes of :class:`Unavailable` that a later try may not meet: the store is unreachable,
#: overloaded or failing inside (S3's own codes, and what boto3 raises for a connection).
TRANSIENT_CODES = frozenset({
    "unreachable", "SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
    "RequestTimeTooSkewed", "500", "502", "503", "504",
})


class StorageError(Exception):
    """A failure of the job store. ``code`` names it for code (S3's error code, such as
    ``NoSuchKey`` or ``InvalidRange``, or ``unreachable``); the message is for people."""

    def __init__(self, message: str = "", *, code: str | None = None):
        super().__init__(message)
        self.code = code


class NotFound(StorageError, FileNotFoundError):
    """No such object (an input, a result, a log)."""


class Unavailable(StorageError):
    """The store could not be reached or refused the request; the message says which."""

    @property
    def transient(self) -> bool:
        """Whether the same request may succeed later (an outage, not a refusal)."""
        return self.code in TRANSIENT_CODES


class Sink(Protocol):
    """A large upload streaming into the store (writes run off the event loop)."""

    def write(self, piece: bytes) -> None: ...

    def close(self) -> None:
        """The upload is whole: finish storing it."""

    def abort(self) -> None:
        """Forget the upload: nothing of it stays in the store, whatever was written."""

    def open(self) -> BinaryIO:
        """What the content checks read (the file itself, or the head kept while it streamed)."""


class Staging(Protocol):
    """The inputs of a submission on their way in. Nothing of it is the job's before
    :meth:`commit`; :meth:`discard` leaves nothing behind, whatever was written."""

    def sink(self, name: str) -> Sink: ...

    def put(self, name: str, data: bytes) -> None: ...

    def commit(self) -> None: ...

    def discard(self) -> None: ...


class Attempt(Protocol):
    """One attempt of a job on a worker. ``inputs`` holds the inputs under their names,
    the pipeline writes into ``workdir`` and appends to ``log`` (an open binary file)."""

    inputs: Path
    workdir: Path
    log: BinaryIO

    def fetch(self, names: list[str]) -> None:
        """Bring the job's stored inputs ``names`` into ``inputs`` (where they are not already)."""

    def publish(self, claim: Callable[[], bool]) -> bool:
        """Make ``workdir`` the job's results if ``claim()`` (the lease's check that it is
        still this attempt's, which also records that this attempt publishes) says yes just
        before the step that counts; False, publishing nothing, if not."""

    def sync_log(self) -> None:
        """Bring the stored log up to date (called every few seconds while the pipeline runs)."""

    def close(self) -> None:
        """Free the attempt's scratch space (also done at the next attempt's start)."""


class Store(Protocol):
    #: Whether an attempt runs in a local scratch folder of the worker's (object storage)
    #: rather than in the job's own folder (the data volume).
    uses_scratch: bool

    def staging(self, job_id: str) -> Staging: ...

    def attempt(self, job_id: str, number: int, scratch: Path | None) -> Attempt:
        """Start attempt ``number`` of a job; ``scratch`` is the worker's own local folder
        (which the worker holds, see :mod:`pipeq.worker.scratch`) when :attr:`uses_scratch`.
        Unavailable or OSError if it cannot."""

    def published(self, job_id: str) -> dict | None:
        """The published result ``{"files": [...], "summary": {...}}``, if an attempt published one."""

    def log_tail(self, job_id: str, nbytes: int) -> bytes: ...

    def output(self, job_id: str, name: str) -> tuple[Iterator[bytes] | Path, int | None]:
        """A result file: a local path (file backend) or an iterator of its bytes and its
        size. NotFound when it is not one of the job's published results."""

    def remove(self, job_id: str) -> None: ...

    def prune(self, job_exists: Callable[[str], bool], older_than: float) -> list[str]: ...


def summary_of(report: Path) -> dict:
    """The numbers of a pipeline's report.json ({} when it wrote none or a bad one)."""
    try:
        value = json.loads(report.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
