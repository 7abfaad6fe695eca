"""Where a job's files live: one interface, two backends, chosen by ``PIPEQ_STORAGE``.

- ``file`` (:class:`FileStore`): the data folder shared by the API and the workers, laid out
  as :mod:`pipeq.storage` describes; a worker runs the pipeline in the job's folder itself.
- ``s3://BUCKET[/PREFIX]`` (:class:`pipeq.s3.S3Store`): an S3-compatible object store; a
  worker copies the inputs to local scratch and publishes the results back.

What each side needs:

- the API stages a submission's inputs (:meth:`Store.staging`: large uploads stream in as
  they arrive, small ones are written once checked), and reads the log and results;
- a worker opens an :class:`Attempt`: where the inputs are, where the pipeline writes, the
  log, and :meth:`Attempt.publish`, which makes the results the job's;
- workers prune what expired (:meth:`Store.prune`).

Any failure to reach the store raises :class:`Unavailable` (the API answers 503, a job fails
with reason ``storage error``); the file backend's own errors stay ``OSError`` (a full disk
is a 507, not a 503).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from pipeq import storage
from pipeq.settings import Settings


class Unavailable(Exception):
    """The store could not be reached or refused the request; the message says which."""


class NotFound(Exception):
    """No such object (an input, a result, a log)."""


class Sink(Protocol):
    """A large upload streaming into the store (writes run off the event loop)."""

    def write(self, piece: bytes) -> None: ...

    def close(self) -> None:
        """The upload is whole: finish storing it."""

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
    def staging(self, job_id: str) -> Staging: ...

    def attempt(self, job_id: str, number: int, worker: str) -> Attempt:
        """Start attempt ``number`` of a job on ``worker``; Unavailable or OSError if it cannot."""

    def published(self, job_id: str) -> dict | None:
        """The published result ``{"files": [...], "summary": {...}}``, if an attempt published one."""

    def log_tail(self, job_id: str, nbytes: int) -> bytes: ...

    def output(self, job_id: str, name: str) -> tuple[Iterator[bytes] | Path, int | None]:
        """A result file: a local path (file backend) or an iterator of its bytes and its
        size. NotFound when it is not one of the job's published results."""

    def remove(self, job_id: str) -> None: ...

    def prune(self, job_exists: Callable[[str], bool], older_than: float) -> list[str]: ...


def open_store(settings: Settings) -> Store:
    """The store ``settings.storage`` names."""
    if settings.storage == "file":
        return FileStore(settings.data_dir)
    from pipeq.s3 import S3Store  # boto3 is imported only when it is used

    return S3Store.from_url(settings.storage, scratch=settings.scratch_dir)


def summary_of(report: Path) -> dict:
    """The numbers of a pipeline's report.json ({} when it wrote none or a bad one)."""
    try:
        value = json.loads(report.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# -- the data folder --------------------------------------------------------------------------


class FileSink:
    """A large upload written to its file in the staging folder."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._out: BinaryIO | None = open(path, "xb")

    def write(self, piece: bytes) -> None:
        self._out.write(piece)

    def close(self) -> None:
        if self._out:
            self._out.close()
            self._out = None

    def open(self) -> BinaryIO:
        return open(self.path, "rb")


class FileStaging:
    """``jobs/.incoming-<id>/inputs/``, renamed to ``jobs/<id>/`` on commit."""

    def __init__(self, data_dir: Path, job_id: str):
        self.final = storage.job_dir(data_dir, job_id)
        self.incoming = self.final.with_name(f".incoming-{job_id}")
        self.sinks: list[FileSink] = []
        self.committed = False

    def sink(self, name: str) -> FileSink:
        s = FileSink(self.incoming / "inputs" / name)
        self.sinks.append(s)
        return s

    def put(self, name: str, data: bytes) -> None:
        # one mkdir per folder (parents=True would try the inner one first, fail and retry)
        for d in (self.incoming, self.incoming / "inputs"):
            if not d.is_dir():
                d.mkdir()
        with open(self.incoming / "inputs" / name, "xb") as out:
            out.write(data)

    def commit(self) -> None:
        self.incoming.rename(self.final)
        self.committed = True

    def discard(self) -> None:
        for s in self.sinks:
            s.close()
        shutil.rmtree(self.final if self.committed else self.incoming, ignore_errors=True)


class FileAttempt:
    """An attempt in the job's folder: inputs in ``inputs/``, results written into
    ``work/attempt-<n>/``, published by renaming it to ``output/``."""

    def __init__(self, jdir: Path, number: int):
        self.jdir = jdir
        self.inputs = jdir / "inputs"
        # what a killed earlier attempt left goes now
        shutil.rmtree(jdir / "work", ignore_errors=True)
        self.workdir = jdir / "work" / f"attempt-{number}"
        self.workdir.mkdir(parents=True)
        self.log = open(jdir / "pipeline.log", "ab", buffering=0)

    def fetch(self, names: list[str]) -> None:
        pass  # the inputs are in the job's folder

    def publish(self, claim: Callable[[], bool]) -> bool:
        if not claim():
            return False
        out = self.jdir / "output"
        shutil.rmtree(out, ignore_errors=True)
        os.replace(self.workdir, out)
        return True

    def sync_log(self) -> None:
        pass  # the log is the file itself

    def close(self) -> None:
        self.log.close()
        # its own folder only: an attempt that lost its lease may end after the next one
        # started, whose folder is beside it
        shutil.rmtree(self.workdir, ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.jdir / "work").rmdir()  # when no other attempt is there


class FileStore:
    """Job folders under ``<data_dir>/jobs`` (see :mod:`pipeq.storage`)."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        storage.jobs_root(self.data_dir).mkdir(parents=True, exist_ok=True)

    def staging(self, job_id: str) -> FileStaging:
        return FileStaging(self.data_dir, job_id)

    def attempt(self, job_id: str, number: int, worker: str) -> FileAttempt:
        return FileAttempt(storage.job_dir(self.data_dir, job_id), number)

    def published(self, job_id: str) -> dict | None:
        out = storage.job_dir(self.data_dir, job_id) / "output"
        if not out.is_dir():
            return None
        return {"files": storage.files_in(out), "summary": summary_of(out / "report.json")}

    def log_tail(self, job_id: str, nbytes: int) -> bytes:
        try:
            with open(storage.job_dir(self.data_dir, job_id) / "pipeline.log", "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - nbytes))
                return f.read()
        except FileNotFoundError:
            return b""

    def output(self, job_id: str, name: str) -> tuple[Path, int]:
        path = storage.output_file(self.data_dir, job_id, name)
        if path is None:
            raise NotFound(name)
        return path, path.stat().st_size

    def remove(self, job_id: str) -> None:
        storage.remove_job_dir(self.data_dir, job_id)

    def prune(self, job_exists: Callable[[str], bool], older_than: float) -> list[str]:
        return storage.prune(self.data_dir, job_exists, older_than)
