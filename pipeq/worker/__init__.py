"""The pipeq worker: an RQ worker that runs pipeline.sh jobs (see ``task.py``)."""

from pipeq.worker.main import PipeqWorker, run_worker

__all__ = ["PipeqWorker", "run_worker"]
