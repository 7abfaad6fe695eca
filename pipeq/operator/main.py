"""``pipeq operator [--namespace NS ...] [--liveness URL | --no-liveness] [--metrics-port N] [--verbose]``.

Runs the kopf operator: the same as ``kopf run -m pipeq.operator --standalone [-n NS ...| -A]
[--liveness URL]``, plus the Prometheus metrics server.
"""

from __future__ import annotations

import argparse
import os

DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"


def parse(argv: list[str] | None = None) -> tuple[dict, bool]:
    """The keyword arguments of ``kopf.run`` for a command line, and whether to be verbose.

    Also puts ``--metrics-port`` into ``PIPEQ_OPERATOR_METRICS_PORT`` (read by the startup
    handler, which serves ``/metrics`` there) and the namespaces into
    ``PIPEQ_OPERATOR_NAMESPACES`` (startup.configure decides kopf's scanning by them).
    """
    parser = argparse.ArgumentParser(prog="pipeq operator", description="Run the WorkerPool operator.")
    parser.add_argument("--namespace", "-n", action="append", default=[],
                        help="watch this namespace (repeatable; glob patterns allowed); none: every namespace")
    parser.add_argument("--liveness", metavar="URL", default=DEFAULT_LIVENESS,
                        help=f"serve kopf's liveness probe at URL (default {DEFAULT_LIVENESS}; '' = none)")
    parser.add_argument("--no-liveness", dest="liveness", action="store_const", const="",
                        help="serve no liveness probe")
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        default=int(os.environ.get("PIPEQ_OPERATOR_METRICS_PORT") or 0),
                        help="serve Prometheus /metrics on PORT (default $PIPEQ_OPERATOR_METRICS_PORT; 0 = none)")
    parser.add_argument("--standalone", action="store_true",
                        help="accepted for kopf's sake; the operator always runs standalone (no peering)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log kopf's own work too")
    args = parser.parse_args(argv)
    os.environ["PIPEQ_OPERATOR_METRICS_PORT"] = str(max(0, args.metrics_port))
    # for startup.configure, which turns kopf's namespace scanning off for exact names
    os.environ["PIPEQ_OPERATOR_NAMESPACES"] = ",".join(args.namespace)
    return dict(
        standalone=True,  # see startup.configure: one operator pod, no peering
        clusterwide=not args.namespace,
        namespaces=list(args.namespace),
        liveness_endpoint=args.liveness or None,
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
