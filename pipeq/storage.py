"""The job folder on the shared data volume, and safe names inside it.

Layout of ``<data_dir>/jobs/<job_id>/``: ``inputs/`` (the checked uploads), ``work/attempt-<n>/``
(scratch of one attempt), ``output/`` (the published results of the attempt that succeeded)
and ``pipeline.log`` (the pipeline's output, all attempts).
"""

from __future__ import annotations

import os
import re
import shutil
import time
import unicodedata
from pathlib import Path

JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def jobs_root(data_dir: Path) -> Path:
    return Path(data_dir) / "jobs"


def job_dir(data_dir: Path, job_id: str) -> Path:
    """The job's folder. Raises ValueError for anything that is not a job id (no path tricks)."""
    if not JOB_ID_RE.match(job_id):
        raise ValueError("not a job id")
    return jobs_root(data_dir) / job_id


def filename_problem(name: str) -> str | None:
    """Why an upload's file name is refused, or None. A browser sends a bare name; a path,
    ``..``, NUL or control characters, or invisible format characters (such as a
    right-to-left override that disguises an extension) are tricks, not names."""
    if "/" in name or "\\" in name or name in (".", ".."):
        return "the file name must not contain a path"
    for ch in name:
        if unicodedata.category(ch) in ("Cc", "Cf"):
            return f"the file name contains a control or invisible character (U+{ord(ch):04X})"
    return None


def sanitize_filename(name: str, fallback: str) -> str:
    """A safe base name for an upload: no directories, no control or exotic characters.

    Unicode is folded to ASCII (NFKD), path separators and everything outside
    ``[A-Za-z0-9._-]`` become ``_``, leading dots are dropped (no hidden files, no ``..``),
    and the result is at most 100 characters. An empty result gives ``fallback``.
    """
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    name = _UNSAFE.sub("_", name).lstrip(".")
    name = name[-100:]
    return name or fallback


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


def files_in(folder: Path) -> list[str]:
    """Names of the regular files directly in ``folder``, sorted (what a job publishes)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.is_symlink())


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
