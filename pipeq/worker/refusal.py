"""What a pipeq worker refuses to run: anything but pipeq's task as pipeq's API enqueues it.

What a client can write to Redis is data, never code (issue 23). A job runs only if:

- its data loads as JSON (``queue.SERIALIZER``; a pickle is never loaded);
- it names ``queue.TASK`` and no instance (nothing else is imported);
- its id is a job id and its arguments are the task's keywords, with input names that are
  bare file names (no path reaches outside the job's folder).

:func:`refusal` checks that before RQ imports anything; the worker fails a refused job with
the reason ``refused job`` (``REASON``), spending no retry, and takes the next one.
"""

from __future__ import annotations

from rq.exceptions import DeserializationError
from rq.job import Job

from pipeq.queue import TASK
from pipeq.storage import names

#: The ``error.reason`` of a refused job.
REASON = "refused job"
#: The keywords of ``pipeq.worker.task.run_pipeline``.
KEYWORDS = frozenset({"reads", "reference", "sample", "sources"})


def refusal(job: Job) -> str | None:
    """Why ``job`` is not run (a sentence naming what it asked for), or None to run it."""
    if not names.JOB_ID_RE.match(job.id or ""):
        return f"the job's id {job.id!r} is not a pipeq job id"
    try:
        func_name, instance, args, kwargs = job.func_name, job.instance, job.args, job.kwargs
    except DeserializationError:
        return "the job's data is not JSON, as pipeq writes its jobs (it was not loaded: a pickle would run code)"
    if func_name != TASK or instance is not None:
        return f"the job names {_short(func_name)}{' on an instance' if instance is not None else ''}; pipeq runs only {TASK}"
    if args or not isinstance(kwargs, dict) or not set(kwargs) <= KEYWORDS:
        return f"the job's arguments are not {TASK}'s keywords ({', '.join(sorted(KEYWORDS))})"
    return _inputs_problem(kwargs)


def _inputs_problem(kwargs: dict) -> str | None:
    reads, reference = kwargs.get("reads"), kwargs.get("reference")
    sample, sources = kwargs.get("sample"), kwargs.get("sources") or {}
    if not isinstance(reads, list) or not all(isinstance(r, str) for r in reads) or not isinstance(reference, str):
        return "the job's reads must be a list of file names and its reference a file name"
    if sample is not None and not isinstance(sample, str):
        return "the job's sample must be a string"
    if not isinstance(sources, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in sources.items()):
        return "the job's sources must map input names to URLs"
    for name in (*reads, reference, *sources):
        if not name or (problem := names.filename_problem(name)):
            return f"the job's input {_short(name)}: {problem or 'an empty name'}"
    return None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."
