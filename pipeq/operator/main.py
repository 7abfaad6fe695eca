"""``pipeq operator [--namespace NS ...] [--liveness URL | --no-liveness] [--metrics-port N] [--verbose]``.

Runs the kopf operator: the same as ``kopf run -m pipeq.operator --standalone [-n NS ...| -A]
[--liveness URL]``, plus the Prometheus metrics server.
"""

from __future__ import annotations

import argparse

from pipeq.settings import Settings, get_settings

DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"


def parse(argv: list[str] | None = None, base: Settings | None = None) -> tuple[dict, bool]:
    """The keyword arguments of ``kopf.run`` for a command line, and whether to be verbose.

    The options override the operator's fields of pipeq's settings (``base``, by default
    the environment's); the result travels to the handlers in kopf's memo
    (``kwargs["memo"].settings``), where ``startup.start`` reads it.
    """
    base = base or get_settings()
    parser = argparse.ArgumentParser(prog="pipeq operator", description="Run the WorkerPool operator.")
    parser.add_argument("--namespace", "-n", action="append", default=None,
                        help="watch this namespace (repeatable; glob patterns allowed); none: $PIPEQ_OPERATOR_NAMESPACES, or every namespace")
    parser.add_argument("--liveness", metavar="URL", default=DEFAULT_LIVENESS,
                        help=f"serve kopf's liveness probe at URL (default {DEFAULT_LIVENESS}; '' = none)")
    parser.add_argument("--no-liveness", dest="liveness", action="store_const", const="",
                        help="serve no liveness probe")
    parser.add_argument("--metrics-port", type=int, metavar="PORT", default=base.operator_metrics_port,
                        help="serve Prometheus /metrics on PORT (default $PIPEQ_OPERATOR_METRICS_PORT; 0 = none)")
    parser.add_argument("--standalone", action="store_true",
                        help="accepted for kopf's sake; the operator always runs standalone (no peering)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log kopf's own work too")
    args = parser.parse_args(argv)
    settings = base.model_copy(update={
        "operator_metrics_port": max(0, args.metrics_port),
        "operator_namespaces": ",".join(args.namespace) if args.namespace is not None else base.operator_namespaces,
    })
    namespaces = settings.operator_namespace_list

    import kopf

    return dict(
        standalone=True,  # see startup.configure: one operator pod, no peering
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness or None,
        memo=kopf.Memo(settings=settings),
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
