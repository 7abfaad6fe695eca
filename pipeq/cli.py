"""The ``pipeq`` command: ``pipeq api``, ``pipeq worker``, ``pipeq operator``, ``pipeq dev``.

Every option also has a ``PIPEQ_*`` environment variable (see the README's settings table);
an option given on the command line wins.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile


def _env(args: argparse.Namespace, **mapping: str) -> None:
    """Export the options that were given as PIPEQ_* variables, before settings are read."""
    for attr, var in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            os.environ[var] = str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipeq", description="Run bioinformatics pipelines behind a web front end.")
    sub = parser.add_subparsers(dest="command", required=True)

    api = sub.add_parser("api", help="serve the REST API and the web page")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.add_argument("--workers", type=int, help="API processes sharing the port")

    worker = sub.add_parser("worker", help="run a worker that takes jobs from the queue")
    worker.add_argument("--queue")
    worker.add_argument("--name", help="RQ worker name (default: the pod name, HOSTNAME)")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")

    sub.add_parser("operator", help="run the WorkerPool operator (kopf); `pipeq operator --help` for its options")

    sub.add_parser("chart-upgrade", help="the chart's pre-install/pre-upgrade hook: apply the CRD (pipeq/operator/upgrade.py)")
    sub.add_parser("delete-pools", help="delete a namespace's WorkerPools and wait (the chart's pre-delete hook): NAMESPACE [TIMEOUT]")

    dev = sub.add_parser("dev", help="run everything on this machine: embedded Redis, the API, autoscaled workers")
    dev.add_argument("--host")
    dev.add_argument("--port", type=int)
    dev.add_argument("--data-dir")
    dev.add_argument("--redis-url", help="use this Redis instead of starting an embedded one")
    dev.add_argument("--min-workers", type=int)
    dev.add_argument("--max-workers", type=int)
    dev.add_argument("--scale-down-delay", type=float)

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["operator"]:
        # kopf's options are the operator's own: hand them over unparsed
        from pipeq.operator.main import run

        return run(argv[1:])
    if argv[:1] == ["chart-upgrade"]:
        from pipeq.operator.upgrade import main as chart_upgrade

        return chart_upgrade(argv[1:])
    if argv[:1] == ["delete-pools"]:
        from pipeq.operator.uninstall import main as delete_pools

        return delete_pools(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "api":
        _env(args, host="PIPEQ_HOST", port="PIPEQ_PORT", workers="PIPEQ_API_WORKERS")
        import uvicorn

        from pipeq.api.app import create_app
        from pipeq.settings import get_settings

        s = get_settings()
        if s.api_workers > 1:
            # each process builds its app from the same PIPEQ_* environment; their metrics
            # meet in one folder (prometheus_client's multiprocess mode), so /metrics counts
            # every process's submissions whichever process answers the scrape
            own_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
            if own_dir:
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="pipeq-api-metrics-")
            try:
                uvicorn.run("pipeq.api.app:create_app", factory=True, workers=s.api_workers,
                            host=s.host, port=s.port, log_level="info", access_log=False)
            finally:
                if own_dir:
                    shutil.rmtree(os.environ.pop("PROMETHEUS_MULTIPROC_DIR"), ignore_errors=True)
        else:
            uvicorn.run(create_app(s), host=s.host, port=s.port, log_level="info", access_log=False)
        return 0
    if args.command == "worker":
        from pipeq.worker.starting import hold_stop_signals

        stop = hold_stop_signals()  # before the imports: a pod may be stopped as it starts
        _env(args, queue="PIPEQ_QUEUE", name="PIPEQ_WORKER_NAME")
        from pipeq.worker import run_worker

        run_worker(burst=args.burst, stop=stop)  # a stop or an empty queue (--burst) is a clean end, jobs done or not
        return 0
    if args.command == "dev":
        _env(
            args,
            host="PIPEQ_HOST", port="PIPEQ_PORT", data_dir="PIPEQ_DATA_DIR", redis_url="PIPEQ_REDIS_URL",
            min_workers="PIPEQ_MIN_WORKERS", max_workers="PIPEQ_MAX_WORKERS", scale_down_delay="PIPEQ_SCALE_DOWN_DELAY",
        )
        import logging

        from pipeq.dev import run_dev

        code = run_dev(embedded_redis=args.redis_url is None and "PIPEQ_REDIS_URL" not in os.environ)
        # all it started has stopped: skip the interpreter's teardown of its imports (half a
        # second of a Ctrl-C's wait)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return 2


if __name__ == "__main__":
    sys.exit(main())
