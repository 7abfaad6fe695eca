"""Run a command as a child subreaper: ``python -m tests.support.subreaper COMMAND [ARGS...]``.

Orphans below the command are reparented to it, as they are to PID 1 in a container without
an init; a test started this way sees the zombies a pod's entry point would collect.
"""

import ctypes
import os
import sys

PR_SET_CHILD_SUBREAPER = 36

if __name__ == "__main__":
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1) != 0:
        sys.exit(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")
    os.execvp(sys.argv[1], sys.argv[1:])  # the attribute survives execve
