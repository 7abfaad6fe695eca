"""Baseline API: save the uploads, enqueue an RQ job, read its status back.

    uvicorn bench.baseline.app:app --port 8001
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job

REDIS_URL = os.environ.get("BASELINE_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("BASELINE_QUEUE", "baseline")
DATA_DIR = Path(os.environ.get("BASELINE_DATA_DIR", "./data-baseline"))

app = FastAPI(title="baseline")
redis = Redis.from_url(REDIS_URL)
queue = Queue(QUEUE, connection=redis)


@app.post("/run_pipeline", status_code=202)
def run_pipeline(
    reads: list[UploadFile] = File(...),
    reference: UploadFile = File(...),
    sample: str | None = Form(None),
):
    job_id = uuid.uuid4().hex
    inputs = DATA_DIR / job_id / "inputs"
    inputs.mkdir(parents=True)
    saved = []
    for upload in [*reads, reference]:
        dest = inputs / os.path.basename(upload.filename or "upload")
        with open(dest, "wb") as out:
            shutil.copyfileobj(upload.file, out)
        saved.append(str(dest))
    queue.enqueue(
        "bench.baseline.tasks.run_pipeline",
        reads=saved[:-1],
        reference=saved[-1],
        outdir=str(DATA_DIR / job_id / "output"),
        sample=sample,
        job_id=job_id,
        job_timeout=6 * 3600,
        result_ttl=7 * 24 * 3600,
    )
    return {"job_id": job_id, "status_url": f"/job_status/{job_id}"}


@app.get("/job_status/{job_id}")
def job_status(job_id: str):
    try:
        job = Job.fetch(job_id, connection=redis)
    except NoSuchJobError:
        raise HTTPException(404, "no such job")
    status = job.get_status()
    return {
        "job_id": job.id,
        "status": status,
        "enqueued_at": job.enqueued_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "result": job.return_value() if status == "finished" else None,
        "error": job.exc_info if status == "failed" else None,
    }


@app.get("/healthz")
def healthz():
    return {"ok": True}
