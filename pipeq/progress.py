"""The progress lines a pipeline prints, and how they become a job's stage and progress.

A pipeline reports progress by printing, on its standard output, lines of exactly this form::

    PROGRESS <percent> <stage> [free text]

``percent`` is an integer from 0 to 100, ``stage`` one word (``qc``, ``align``...). Every other
line is ordinary output. The last progress line seen is the job's ``stage`` and ``progress``.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_LINE = re.compile(r"^PROGRESS\s+(\d{1,3})\s+(\S{1,64})(?:\s+(.*))?$")


class Progress(NamedTuple):
    percent: int
    stage: str
    message: str


def parse(line: str) -> Progress | None:
    """The progress a line reports, or None for any other line (or a percent above 100)."""
    m = _LINE.match(line.strip())
    if not m or int(m.group(1)) > 100:
        return None
    return Progress(int(m.group(1)), m.group(2), (m.group(3) or "")[:200])
