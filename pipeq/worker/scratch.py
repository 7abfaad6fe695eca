"""A worker's own local scratch folder, for attempts on object storage.

A worker holds a lock on ``<root>/<name>.lock`` while it lives; the folders of workers whose
lock is free (killed ones) are removed when another worker on the machine claims its own.
"""

from __future__ import annotations

import fcntl
import shutil
from pathlib import Path
from typing import IO

from pipeq.storage.names import sanitize_filename

_held: dict[Path, IO] = {}  # the locks this process holds, by folder, for its life


def claim(root: Path, worker: str) -> Path:
    """This worker's scratch folder, ``<root>/<worker>/`` (the name made safe), locked for
    the process's life; removes the folders of dead workers beside it."""
    root = Path(root)
    name = sanitize_filename(worker, "worker")
    folder = root / name
    root.mkdir(parents=True, exist_ok=True)
    if folder not in _held:
        lock = open(root / f"{name}.lock", "w")
        fcntl.flock(lock, fcntl.LOCK_EX)
        _held[folder] = lock
    for lock_path in root.glob("*.lock"):
        if lock_path.name == f"{name}.lock":
            continue
        with open(lock_path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its worker is alive
            shutil.rmtree(root / lock_path.stem, ignore_errors=True)
            lock_path.unlink(missing_ok=True)
    return folder
