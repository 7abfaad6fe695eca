"""``pipeq operator [--namespace NS ...] [--liveness URL] [--verbose]``: run the kopf operator.

The same as ``kopf run -m pipeq.operator --standalone [-n NS ...| -A] [--liveness URL]``.
"""

from __future__ import annotations

import argparse


def parse(argv: list[str] | None = None) -> tuple[dict, bool]:
    """The keyword arguments of ``kopf.run`` for a command line, and whether to be verbose."""
    parser = argparse.ArgumentParser(prog="pipeq operator", description="Run the WorkerPool operator.")
    parser.add_argument("--namespace", "-n", action="append", default=[],
                        help="watch this namespace (repeatable; glob patterns allowed); none: every namespace")
    parser.add_argument("--liveness", metavar="URL",
                        help="serve a liveness probe, e.g. http://0.0.0.0:8081/healthz")
    parser.add_argument("--verbose", "-v", action="store_true", help="log kopf's own work too")
    args = parser.parse_args(argv)
    return dict(
        standalone=True,  # see handlers.configure: one operator pod, no peering
        clusterwide=not args.namespace,
        namespaces=list(args.namespace),
        liveness_endpoint=args.liveness,
    ), args.verbose


def run(argv: list[str] | None = None) -> int:
    """``pipeq operator``: runs until SIGTERM/SIGINT; returns the exit code."""
    kwargs, verbose = parse(argv)

    import kopf

    import pipeq.operator  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=verbose)
    kopf.run(**kwargs)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(run(sys.argv[1:]))
