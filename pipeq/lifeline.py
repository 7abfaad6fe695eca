"""Child processes that end with the process that started them (Linux's PR_SET_PDEATHSIG).

``pipeq dev`` starts redis-server, the API and the workers' fork server in sessions of their
own, so that a Ctrl-C (SIGINT to the terminal's whole foreground group) reaches ``pipeq dev``
alone and it can stop them in order. In a session of its own a child no longer dies with the
terminal's group, so each is tied to ``pipeq dev``'s life instead: should ``pipeq dev`` be
killed outright (SIGKILL, OOM), the kernel sends each child ``sig``.

The kernel ties the child to the *thread* that forked it: start these children from a thread
that lives as long as the process (``pipeq dev`` starts them from its main thread).
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
# resolved now, in the parent: between fork and exec the child makes one system call and
# takes no lock (what makes a preexec_fn safe in a process with threads)
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``sig`` when this process
    dies (and at once, should this process already be gone when the child starts)."""
    parent = os.getpid()
    sig = int(sig)

    def tie() -> None:
        _prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return tie

