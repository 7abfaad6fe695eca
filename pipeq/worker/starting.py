"""What a worker process does first, before its imports."""

from __future__ import annotations

import signal
import threading


def hold_stop_signals() -> threading.Event:
    """Note SIGTERM and SIGINT in the returned event until the worker is ready for them.

    RQ installs its own handlers only after it has registered the worker, and the imports
    before that take a second or more. Until then a signal (a pod scaled away, or a rollout,
    as it starts) would kill the worker outright: exit 143, and its registration left
    behind. With the signal held, the worker stops cleanly once RQ's handlers are in
    (``PipeqWorker._install_signal_handlers``), before it takes any job."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    return stop
