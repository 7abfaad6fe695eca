"""The pipeq worker: an RQ worker that runs pipeline.sh jobs (see ``task.py``).

``PipeqWorker`` and ``run_worker`` are imported on first use, so that ``starting`` can run
before the worker's heavy imports (rq, redis, pydantic)."""

__all__ = ["PipeqWorker", "run_worker"]


def __getattr__(name: str):
    if name in __all__:
        from pipeq.worker import main

        return getattr(main, name)
    raise AttributeError(f"module 'pipeq.worker' has no attribute {name!r}")
