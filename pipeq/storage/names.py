"""Safe names in the job store: job ids, and the file names users give their uploads."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def check_job_id(job_id: str) -> str:
    """``job_id`` itself; ValueError for anything that is not a job id (no path tricks)."""
    if not JOB_ID_RE.match(job_id):
        raise ValueError("not a job id")
    return job_id


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


def files_in(folder: Path) -> list[str]:
    """Names of the regular files directly in ``folder``, sorted (what a job publishes)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.is_symlink())
