"""Quotas on real Redis: atomic across processes, 429 with its body and nothing stored, group
overrides, admins uncapped, the per-minute window, and the active count going down however a
job ends (a real worker's end, cancel, the reaper's failure, expiry)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
from rq.job import Job

from pipeq import queue, quotas
from pipeq.quotas import QuotaExceeded
from pipeq.settings import Settings
from tests.conftest import ROOT, wait_for
from tests.integration.test_worker import submit, until
from tests.support import pipelines

Q = "pipeline_tasks"


def enqueue(conn, owner, settings, groups=(), admin=False):
    job_id = uuid.uuid4().hex
    meta = {"owner": owner, "owner_groups": list(groups), "owner_admin": admin, "attempt": 0}
    queue.enqueue_run(conn, Q, job_id, {"reads": [], "reference": "r"}, meta=meta, retries=1, ttl=600, settings=settings)
    return job_id


def admitted(conn, owner, settings, n, **kw):
    ok, refused = [], []
    for _ in range(n):
        try:
            ok.append(enqueue(conn, owner, settings, **kw))
        except QuotaExceeded as e:
            refused.append(e)
    return ok, refused


# Run in two processes at once: 25 threads each submit one job of ``alice`` (capped at 5)
# and one of ``bob`` (uncapped: his group lifts the cap); print what was admitted.
_RACER = """
import json, sys, threading, uuid
from pipeq import queue
from pipeq.quotas import QuotaExceeded
from pipeq.settings import Settings

url = sys.argv[1]
s = Settings(redis_url=url, quota_active_jobs=5, quota_groups={"lab-b": {"active_jobs": None}})
conn = queue.connect(url)
conn.blpop("test:go", timeout=30)
out = {"alice": 0, "alice_refused": 0, "bob": 0}
lock = threading.Lock()
def one(owner, groups):
    meta = {"owner": owner, "owner_groups": groups, "attempt": 0}
    try:
        queue.enqueue_run(conn, "pipeline_tasks", uuid.uuid4().hex, {"reads": [], "reference": "r"}, meta=meta, retries=1, ttl=600, settings=s)
        key = owner
    except QuotaExceeded as e:
        assert (e.limit, e.allowed) == ("active_jobs", 5)
        key = owner + "_refused"
    with lock:
        out[key] += 1
threads = [threading.Thread(target=one, args=a) for _ in range(25) for a in (("alice", []), ("bob", ["lab-b"]))]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"""


def test_the_last_slot_is_admitted_once_across_two_processes(conn, redis_server):
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, redis_server.url], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}) for _ in range(2)]
    conn.rpush("test:go", 1, 1)
    outs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(o["alice"] for o in outs) == 5 and sum(o["alice_refused"] for o in outs) == 45, outs
    assert sum(o["bob"] for o in outs) == 50, outs
    assert conn.scard(quotas.active_key("alice")) == 5
    assert queue.queue_stats(conn, Q).queued == 55  # nothing of a refused submission was stored


def test_group_override_and_admin_are_not_capped_alike(conn):
    s = Settings(quota_active_jobs=1, quota_groups={"big": {"active_jobs": 3}})
    assert [len(x) for x in admitted(conn, "alice", s, 3)] == [1, 2]
    assert [len(x) for x in admitted(conn, "bob", s, 4, groups=["big"])] == [3, 1]
    assert [len(x) for x in admitted(conn, "root", s, 10, admin=True)] == [10, 0]


def test_submissions_per_minute_are_a_sliding_window(conn):
    s = Settings(quota_submissions_per_minute=3)
    ok, refused = admitted(conn, "alice", s, 5)
    assert len(ok) == 3 and len(refused) == 2
    e = refused[0]
    assert (e.limit, e.allowed, e.current) == ("submissions_per_minute", 3, 3) and 1 <= e.retry_after <= 61
    # the window slides: the admissions of more than a minute ago no longer count
    conn.zadd(quotas.submitted_key("alice"), {j: time.time() - 61 for j in ok})
    assert len(admitted(conn, "alice", s, 1)[0]) == 1
    assert quotas.usage(conn, "alice", (), s)["submissions_last_minute"] == 1


def test_the_active_count_heals_whatever_ended_the_jobs(conn):
    s = Settings(quota_active_jobs=3)
    a = admitted(conn, "alice", s, 3)[0]
    with pytest.raises(QuotaExceeded) as over:
        enqueue(conn, "alice", s)
    assert (over.value.limit, over.value.current, over.value.retry_after) == ("active_jobs", 3, quotas.ACTIVE_RETRY_AFTER)
    # failed by the reaper (lost, no retries left) and expired: nobody released them
    conn.hset(Job.key_for(a[0]), "status", "failed")
    conn.delete(Job.key_for(a[1]))
    assert len(admitted(conn, "alice", s, 3)[0]) == 2  # the cap holds again after two
    assert quotas.usage(conn, "alice", (), s) == {"active_jobs": 3, "submissions_last_minute": 5,
                                                  "limits": {"active_jobs": 3, "submissions_per_minute": None}}


@pytest.fixture
def capped(settings):
    settings.quota_active_jobs = 2
    return settings


@pytest.fixture
def alice(make_client, capped):
    """A client of the API signed in as alice, an OIDC user (a local issuer's token): the
    quotas cap users, not the lone user of a laptop's pipeq (mode none), who is its admin."""
    from tests.support.oidc_issuer import LocalIssuer

    issuer = LocalIssuer().start()
    capped.oidc_issuer, capped.oidc_audience = issuer.url, issuer.audience
    token = issuer.sign(sub="alice", preferred_username="alice")
    try:
        with make_client(headers={"Authorization": f"Bearer {token}"}) as c:
            yield c
    finally:
        issuer.stop()


def test_api_answers_429_with_retry_after_and_keeps_nothing(alice, dataset, conn, capped):
    client = alice
    ids = [submit(client, dataset) for _ in range(2)]
    files = [("reads", (p.name, p.read_bytes())) for p in dataset.reads] + [("reference", (dataset.reference.name, dataset.reference.read_bytes()))]
    r = client.post("/run_pipeline", files=files)
    assert r.status_code == 429, r.text
    assert r.headers["retry-after"] == str(quotas.ACTIVE_RETRY_AFTER)
    body = r.json()
    assert {k: body[k] for k in ("limit", "allowed", "current")} == {"limit": "active_jobs", "allowed": 2, "current": 2}
    assert "2 active jobs, 2 allowed" in body["detail"]
    assert sorted(p.name for p in (capped.data_dir / "jobs").iterdir()) == sorted(ids)  # its staging went
    assert len(conn.keys(Job.key_for("*"))) == 2 and conn.zcard(queue.JOBS_INDEX) == 2
    # a cancel frees a slot at once
    assert client.delete(f"/jobs/{ids[0]}").json()["status"] == "canceled"
    submit(client, dataset)


def test_a_run_that_ends_on_a_worker_frees_its_slot(client, dataset, conn, capped, workers, tmp_path):
    capped.pipeline = pipelines.write(tmp_path, "fail.sh", pipelines.FAILING)
    ids = [submit(client, dataset) for _ in range(2)]
    workers.start()
    for job_id in ids:
        assert until(client, job_id)["status"] == "failed"
    # released by the worker (just after RQ records the end), not pruned
    wait_for(lambda: conn.scard(quotas.active_key("anonymous")) == 0, timeout=10, what="the slots freed")
    capped.pipeline = pipelines.write(tmp_path, "ok.sh", pipelines.SLEEPY)
    workers.stop()
    workers.start(PIPEQ_TEST_SLEEP=0)  # a worker of the new pipeline
    ids = [submit(client, dataset) for _ in range(2)]
    for job_id in ids:
        assert until(client, job_id)["status"] == "finished"
    wait_for(lambda: conn.scard(quotas.active_key("anonymous")) == 0, timeout=10, what="the slots freed")
