"""The data-folder backend (``PIPEQ_STORAGE=file``): job folders on a volume shared by the
API and the workers; a worker runs the pipeline in the job's folder itself.

Layout of ``<data_dir>/jobs/<job_id>/``: ``inputs/`` (the checked uploads), ``work/attempt-<n>/``
(scratch of one attempt), ``output/`` (the published results of the attempt that succeeded)
and ``pipeline.log`` (the pipeline's output, all attempts). A submission is staged in
``jobs/.incoming-<job_id>/`` and renamed into place when it is whole.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pipeq.storage.base import NotFound, summary_of
from pipeq.storage.names import JOB_ID_RE, check_job_id, files_in


def jobs_root(data_dir: Path) -> Path:
    return Path(data_dir) / "jobs"


def job_dir(data_dir: Path, job_id: str) -> Path:
    """The job's folder. Raises ValueError for anything that is not a job id (no path tricks)."""
    return jobs_root(data_dir) / check_job_id(job_id)


def output_file(data_dir: Path, job_id: str, name: str) -> Path | None:
    """The path of result ``name`` of a job, or None when it is not a regular file inside
    that job's ``output/`` folder (``..``, absolute names, symlinks pointing out are refused)."""
    out = (job_dir(data_dir, job_id) / "output").resolve()
    if not name or "/" in name or "\\" in name or "\0" in name or name in (".", ".."):
        return None
    candidate = out / name
    if candidate.is_symlink():
        return None
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if resolved.parent != out or not resolved.is_file():
        return None
    return resolved


def list_outputs(data_dir: Path, job_id: str) -> list[str]:
    """Names of the regular files in a job's output folder, sorted."""
    return files_in(job_dir(data_dir, job_id) / "output")


def remove_job_dir(data_dir: Path, job_id: str) -> None:
    shutil.rmtree(job_dir(data_dir, job_id), ignore_errors=True)


def prune(data_dir: Path, job_exists, older_than: float, incoming_older_than: float = 3600.0) -> list[str]:
    """Remove the folders of jobs that expired from Redis, and stale half-made uploads.

    A job folder goes when ``job_exists(job_id)`` is false and it was last changed more than
    ``older_than`` seconds ago; an ``.incoming-*`` folder (an upload cut off by a crash) when
    nothing in it has changed for ``incoming_older_than`` (a long upload goes on writing its
    spool file, whose folders' mtimes no longer change). Returns the names removed.
    """
    root = jobs_root(data_dir)
    if not root.is_dir():
        return []
    now, removed = time.time(), []
    for entry in root.iterdir():
        try:
            age = now - entry.stat().st_mtime
        except OSError:
            continue
        if entry.name.startswith(".incoming-"):
            stale = age > incoming_older_than and now - _last_change(entry) > incoming_older_than
        else:
            stale = JOB_ID_RE.match(entry.name) is not None and age > older_than and not job_exists(entry.name)
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


def _last_change(folder: Path) -> float:
    """The newest mtime of ``folder`` and everything in it (an upload's few files)."""
    newest = 0.0
    for parent, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            try:
                newest = max(newest, os.lstat(os.path.join(parent, name)).st_mtime)
            except OSError:
                pass
    return newest


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

    def abort(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def open(self) -> BinaryIO:
        return open(self.path, "rb")


class FileStaging:
    """``jobs/.incoming-<id>/inputs/``, renamed to ``jobs/<id>/`` on commit."""

    def __init__(self, data_dir: Path, job_id: str):
        self.final = job_dir(data_dir, job_id)
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
            s.abort()
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
    """Job folders under ``<data_dir>/jobs`` (see the module's docstring)."""

    uses_scratch = False

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        jobs_root(self.data_dir).mkdir(parents=True, exist_ok=True)

    def staging(self, job_id: str) -> FileStaging:
        return FileStaging(self.data_dir, job_id)

    def attempt(self, job_id: str, number: int, scratch: Path | None = None) -> FileAttempt:
        return FileAttempt(job_dir(self.data_dir, job_id), number)

    def published(self, job_id: str) -> dict | None:
        out = job_dir(self.data_dir, job_id) / "output"
        if not out.is_dir():
            return None
        return {"files": files_in(out), "summary": summary_of(out / "report.json")}

    def log_tail(self, job_id: str, nbytes: int) -> bytes:
        try:
            with open(job_dir(self.data_dir, job_id) / "pipeline.log", "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - nbytes))
                return f.read()
        except FileNotFoundError:
            return b""

    def output(self, job_id: str, name: str) -> tuple[Path, int]:
        path = output_file(self.data_dir, job_id, name)
        if path is None:
            raise NotFound(name)
        return path, path.stat().st_size

    def remove(self, job_id: str) -> None:
        remove_job_dir(self.data_dir, job_id)

    def prune(self, job_exists: Callable[[str], bool], older_than: float) -> list[str]:
        return prune(self.data_dir, job_exists, older_than)
