"""Small stand-in pipelines for tests about the worker, not about the pipeline.

Each follows pipeline.sh's interface (the same arguments, PROGRESS lines, outputs in
--outdir), so the worker cannot tell them from the real one.
"""

from __future__ import annotations

import stat
from pathlib import Path

HEADER = """#!/usr/bin/env bash
set -u
while [ $# -gt 0 ]; do
  case "$1" in
    --outdir) outdir=$2; shift 2 ;;
    --sample) sample=$2; shift 2 ;;
    *) shift ;;
  esac
done
"""

SLEEPY = HEADER + """
echo "PROGRESS 10 work started"
echo "start $$ $(date +%s.%N) $outdir" >> "${PIPEQ_TEST_TRACE:-/dev/null}"
sleep "${PIPEQ_TEST_SLEEP:-2}"
echo '{"sample": "x", "variants": 1}' > "$outdir/report.json"
echo "result" > "$outdir/result.txt"
echo "end $$ $(date +%s.%N) $outdir" >> "${PIPEQ_TEST_TRACE:-/dev/null}"
echo "PROGRESS 100 done"
"""

FAILING = HEADER + """
echo "PROGRESS 10 work"
echo "something went wrong in stage two" >&2
exit 5
"""

# A pipeline that forks children and grandchildren, some of which ignore SIGTERM.
FORKING = HEADER + """
echo "PROGRESS 10 forking"
marker=${PIPEQ_TEST_MARKER:-pipeq-test-marker}
( trap '' TERM; exec -a "$marker-child" sleep 300 ) &
( ( trap '' TERM; exec -a "$marker-grandchild" sleep 300 ) & exec -a "$marker-child2" sleep 300 ) &
sh -c "trap '' TERM; sleep 300; echo $marker-sh" &
wait
"""

# A pipeline that succeeds at once and leaves a process running in the background.
LEAVES_CHILD = HEADER + """
( exec -a "${PIPEQ_TEST_MARKER:-pipeq-test-marker}-bg" sleep 300 ) >/dev/null 2>&1 &
echo '{"sample": "x"}' > "$outdir/report.json"
echo "PROGRESS 100 done"
"""


def write(directory: Path, name: str, body: str) -> Path:
    path = Path(directory) / name
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def processes_matching(text: str, env: str | None = None) -> list[int]:
    """Pids of live processes whose command line contains ``text`` (and, when given, whose
    environment contains ``env``: tells this test's processes from others' on the machine)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            if env is not None:
                try:
                    if env.encode() not in (entry / "environ").read_bytes():
                        continue
                except OSError:
                    continue
            found.append(int(entry.name))
    return found


def zombies_of(parents: set[int]) -> list[int]:
    """Pids of the zombies whose parent is one of ``parents``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if state == "Z" and int(ppid) in parents:
            found.append(int(entry.name))
    return found
