"""Process-group guard for one pipeline run (stdlib only; started with ``python -S``).

The worker starts this script as the leader of a new session; it runs the pipeline as its
child in the same process group. Its one job is the case the worker cannot handle itself:
when the worker dies (SIGKILL, OOM), the kernel sends the guard SIGTERM (PR_SET_PDEATHSIG),
and the guard kills the whole group — TERM, then KILL after the grace period — so no
pipeline process outlives its worker. On a normal end it kills the group's stragglers too
and exits with the pipeline's exit code.

It reaps what it kills: an orphan comes to the guard (below), so when it dies it is the
guard's zombie, and a guard that exited without waiting for it would hand it on to the
worker, which never waits for children it did not start (in a pod without an init, the
worker is PID 1: its zombies would pile up for the pod's life).

"The group" is the guard's process group plus every descendant of the guard: the guard is a
child subreaper (PR_SET_CHILD_SUBREAPER), so a process that leaves the group with setsid()
(a daemonising tool) or is orphaned by a double fork stays below it and is killed as well.

Usage: guard.py GRACE_SECONDS -- COMMAND [ARGS...]
"""

import ctypes
import os
import signal
import sys
import time

# Not subprocess: importing it (locale, re, enum, selectors) costs this start-up, which every
# job waits for, about 3x what the rest does; posix_spawn is one call.

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid`` or below this process (which
    is a subreaper, so orphans and setsid() escapees stay below it), this one excluded."""
    me = os.getpid()
    procs = {}  # pid -> (state, ppid, pgid)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is the state, fields[1] the ppid, fields[2] the pgid
        procs[int(entry)] = (fields[0], int(fields[1]), int(fields[2]))
    below, changed = {me}, True
    while changed:
        changed = False
        for pid, (_, ppid, _) in procs.items():
            if ppid in below and pid not in below:
                below.add(pid)
                changed = True
    return [pid for pid, (state, _, group) in procs.items() if state != "Z" and (group == pgid or pid in below)]


def kill_group(grace: float) -> None:
    """TERM every process of our group, wait up to ``grace`` for them, then KILL the rest."""
    pgid = os.getpgrp()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for pid in group_members(pgid):
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and group_members(pgid):
        time.sleep(0.05)
    for pid in group_members(pgid):
        _signal(pid, signal.SIGKILL)
    reap(grace)


def reap(timeout: float) -> None:
    """Wait for every child that has ended or is about to (killed), for up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no children left
        if pid == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def main(argv: list[str]) -> int:
    grace = float(argv[0])
    cmd = argv[argv.index("--") + 1 :]
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != parent:  # the worker died before prctl took effect
        kill_group(grace)
        return 137

    def on_term(signum, frame):
        kill_group(grace)
        os._exit(143)

    signal.signal(signal.SIGTERM, on_term)
    # as subprocess.Popen would: SIGPIPE and SIGXFSZ back to their defaults (Python ignores them)
    pid = os.posix_spawnp(cmd[0], cmd, os.environ, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    while True:  # the pipeline's orphans that end meanwhile are reaped as they go
        done, status = os.waitpid(-1, 0)
        if done == pid:
            break
    rc = os.waitstatus_to_exitcode(status)
    # what the pipeline left running in the background ends with it
    if group_members(os.getpgrp()):
        kill_group(min(grace, 1.0))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
