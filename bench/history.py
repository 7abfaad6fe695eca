"""Past jobs for the cost-growth runs: N finished jobs per side, written by a Lua loop.

Each is a copy of a real RQ job of that side (made with RQ, then cloned server-side: 100 000
jobs take seconds, not minutes): the job hash, its entry in the queue's finished registry,
its expiry (the job TTL), optionally an RQ result, and for pipeq its entry in ``pipeq:jobs``.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import redis
from rq.job import Job, JobStatus
from rq.registry import FinishedJobRegistry
from rq.results import Result

from pipeq import keys
from pipeq import queue as pq_queue

TTL = 7 * 24 * 3600

_CLONE = """
local job_prefix, result_prefix = ARGV[1], ARGV[2]
local prefix, first, n, ttl, now = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local nj, nr = tonumber(ARGV[8]), tonumber(ARGV[9])
local job, res = {}, {}
for k = 1, nj do job[k] = ARGV[9 + k] end
for k = 1, nr do res[k] = ARGV[9 + nj + k] end
for i = first, first + n - 1 do
  local id = prefix .. string.format('%08x', i)
  local key = job_prefix .. id
  redis.call('HSET', key, unpack(job))
  redis.call('EXPIRE', key, ttl)
  redis.call('ZADD', KEYS[1], now + ttl, id)
  if KEYS[2] ~= '' then redis.call('ZADD', KEYS[2], now - (first + n - i), id) end
  if nr > 0 then
    redis.call('XADD', result_prefix .. id, 'MAXLEN', 10, '*', unpack(res))
    redis.call('EXPIRE', result_prefix .. id, ttl)
  end
end
return n
"""


def _template(conn: redis.Redis, queue: str, pipeq: bool) -> tuple[list, list]:
    now = datetime.now(timezone.utc)
    if pipeq:
        func, kwargs = pq_queue.TASK, {"reads": ["sim_R1.fq.gz", "sim_R2.fq.gz"], "reference": "sim.ref.fa", "sample": "S1"}
        meta = {"sample": "S1", "attempt": 1, "inputs": {"reads": ["sim_R1.fq.gz", "sim_R2.fq.gz"], "reference": "sim.ref.fa"},
                "stage": "done", "progress": 100, "error": None}
    else:
        func, kwargs, meta = "bench.baseline.tasks.run_pipeline", {"reads": ["/d/x/inputs/sim_R1.fq.gz", "/d/x/inputs/sim_R2.fq.gz"], "reference": "/d/x/inputs/sim.ref.fa", "outdir": "/d/x/output", "sample": "S1"}, {}
    # pipeq's jobs are JSON (pq_queue.SERIALIZER); the baseline's are plain RQ's (pickle)
    job = Job.create(func, kwargs=kwargs, connection=conn, origin=queue, result_ttl=TTL, failure_ttl=TTL, meta=meta, timeout=-1,
                     serializer=pq_queue.SERIALIZER if pipeq else None)
    job.enqueued_at, job.started_at, job.ended_at = now - timedelta(seconds=400), now - timedelta(seconds=390), now - timedelta(seconds=10)
    job.set_status(JobStatus.FINISHED, pipeline=conn.pipeline())  # sets the attribute; the clone writes it
    mapping = job.to_dict()
    mapping["status"] = "finished"
    job_fields = [x for kv in mapping.items() for x in kv]
    value = {"files": ["S1.bam", "S1.bam.bai", "S1.vcf.gz", "S1.vcf.gz.tbi", "report.json", "report.html"],
             "summary": {"sample": "S1", "reads_before": 1340, "reads_after": 1330, "percent_mapped": 99.1, "mean_depth": 6.6, "variants": 10}}
    res = Result(job_id=job.id, type=Result.Type.SUCCESSFUL, connection=conn, return_value=value, serializer=job.serializer)
    res_fields = [x for kv in res.serialize().items() for x in kv]
    return job_fields, res_fields


def populate(conn: redis.Redis, queue: str, n: int, *, pipeq: bool, with_result: bool = False, batch: int = 20000) -> list[str]:
    """Write ``n`` finished jobs of one side; return their ids."""
    job_fields, res_fields = _template(conn, queue, pipeq)
    if not with_result:
        res_fields = []
    prefix = uuid.uuid4().hex[:24]
    clone = conn.register_script(_CLONE)
    targets = [FinishedJobRegistry(queue, connection=conn).key, keys.JOBS_INDEX if pipeq else ""]
    # the keys of a job id's hash and results, as RQ names them
    key_prefixes = [Job.key_for(""), Result.get_key("")]
    now = time.time()
    for first in range(0, n, batch):
        k = min(batch, n - first)
        clone(keys=targets, args=[*key_prefixes, prefix, first, k, TTL, now, len(job_fields), len(res_fields), *job_fields, *res_fields])
    return [f"{prefix}{i:08x}" for i in range(n)]
