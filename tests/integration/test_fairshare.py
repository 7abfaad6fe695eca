"""The fair share on real Redis: who is served next, weights, positions, cancel of a backlogged
job, scaling's count; and with real workers: B's single run is not held behind A's burst,
a lone user gets every worker, a killed worker's job is still recovered.

The queue-level tests stand in for a worker with the same Redis steps a PipeqWorker takes
(dequeue from the RQ queue, then feed; at the end, status final, then feed); the owners are
set in the meta as the API does (pipeq.api.owners.meta_of)."""

from __future__ import annotations

import os
import signal
import time
import uuid

from rq.job import Job

from pipeq import fairshare, queue, quotas, scaling
from pipeq.settings import Settings
from tests.conftest import wait_for
from tests.integration.test_worker import status, submit, until
from tests.support import pipelines

Q = "pipeline_tasks"
ON = Settings(fair_share_weights={"double": 2})


def enqueue(conn, owner, n=1, groups=(), settings=ON):
    ids = []
    for _ in range(n):
        job_id = uuid.uuid4().hex
        meta = {"owner": owner, "owner_groups": list(groups), "attempt": 0}
        queue.enqueue_run(conn, Q, job_id, {"reads": [], "reference": "r"}, meta=meta, retries=1, ttl=600, settings=settings)
        ids.append(job_id)
    return ids


def owner_of(conn, job_id):
    return quotas.Owner.of(queue.fetch_job(conn, job_id).meta).id


def take(conn):
    """What a worker does when it takes a job: pop the queue's head, start it, feed."""
    job_id = conn.lpop(queue.get_queue(conn, Q).key)
    assert job_id is not None, "nothing in the RQ queue"
    job_id = job_id.decode()
    conn.hset(Job.key_for(job_id), "status", "started")
    fairshare.feed(conn, Q)
    return job_id


def end(conn, job_id):
    """What a worker does at a job's end: the status is final, the slot freed, then feed."""
    conn.hset(Job.key_for(job_id), "status", "finished")
    quotas.release(conn, owner_of(conn, job_id), job_id)
    fairshare.feed(conn, Q)


def test_the_owner_with_fewest_running_is_served_next_oldest_first(conn):
    a = enqueue(conn, "alice", 6)
    b = enqueue(conn, "bob", 2)
    # alice's first job was fed at once; then turns alternate (ties: the older head first)
    served = [take(conn) for _ in range(6)]
    assert served == [a[0], b[0], a[1], b[1], a[2], a[3]]
    assert queue.get_queue(conn, Q).job_ids == [a[4]]  # the queue is kept one long


def test_a_late_single_job_is_next_after_the_queue_head(conn):
    a = enqueue(conn, "alice", 100)
    running = [take(conn), take(conn)]  # two workers busy with alice's jobs
    assert queue.get_queue(conn, Q).job_ids == [a[2]]
    (b,) = enqueue(conn, "bob")
    # the queue's head is chosen again: bob has nothing running, alice two
    assert queue.get_queue(conn, Q).job_ids == [b] and queue.queue_stats(conn, Q).queued == 99
    end(conn, running[0])
    assert take(conn) == b
    assert take(conn) == a[2]  # back at its place at the head of alice's backlog


def test_weights_share_the_workers_two_to_one(conn):
    enqueue(conn, "alice", 60, groups=["double"])
    enqueue(conn, "bob", 60)
    running = [take(conn) for _ in range(3)]
    starts = []
    for _ in range(45):  # three workers: the oldest job ends, its worker takes the next
        end(conn, running.pop(0))
        job_id = take(conn)
        running.append(job_id)
        starts.append(owner_of(conn, job_id))
    share = starts.count("alice") / len(starts)
    assert abs(share - 2 / 3) <= 0.05, share


def test_equal_weights_share_equally(conn):
    enqueue(conn, "alice", 40)
    enqueue(conn, "bob", 40)
    running = [take(conn) for _ in range(2)]
    starts = []
    for _ in range(40):
        end(conn, running.pop(0))
        running.append(take(conn))
        starts.append(owner_of(conn, running[-1]))
    assert starts.count("alice") == 20, starts


def test_position_is_the_place_in_the_order_served(conn):
    from pipeq import jobs

    a = enqueue(conn, "alice", 5)
    b = enqueue(conn, "bob", 3, groups=["double"])
    c = enqueue(conn, "carol", 1)
    ids = a + b + c
    positions = {j: jobs.fetch_for_status(conn, j)[1] for j in ids}
    assert sorted(positions.values()) == list(range(len(ids))), positions
    served = [take(conn) for _ in range(len(ids))]
    assert sorted(ids, key=positions.get) == served


def test_cancel_of_a_backlogged_job(conn):
    a = enqueue(conn, "alice", 3)
    job = queue.fetch_job(conn, a[2])
    assert conn.sismember(quotas.active_key("alice"), a[2])
    assert queue.cancel_queued(conn, job)
    assert queue.fetch_job(conn, a[2]).get_status().value == "canceled"
    assert not fairshare.backlogged(conn, Q, a[2], "alice")
    assert not conn.sismember(quotas.active_key("alice"), a[2])
    assert queue.queue_stats(conn, Q).queued == 2
    assert [take(conn), take(conn)] == a[:2] and conn.llen(queue.get_queue(conn, Q).key) == 0


def test_a_job_gone_from_its_backlog_is_not_dispatched(conn):
    a = enqueue(conn, "alice", 2)
    conn.delete(Job.key_for(a[1]))  # expired while backlogged
    assert take(conn) == a[0]
    assert conn.llen(queue.get_queue(conn, Q).key) == 0 and queue.queue_stats(conn, Q).queued == 0


def test_scaling_counts_every_waiting_job_whoever_s(conn):
    enqueue(conn, "alice", 4)
    enqueue(conn, "bob", 3)
    stats = queue.queue_stats(conn, Q)
    assert (stats.queued, stats.backlogged) == (7, 6)
    d = scaling.decide(queued=stats.queued, running=stats.running, busy=0, current=1, min_replicas=0, max_replicas=10, now=0)
    assert d.desired == 7


def test_with_the_fair_share_off_jobs_go_straight_to_the_queue(conn):
    ids = enqueue(conn, "alice", 3, settings=Settings(fair_share=False)) + enqueue(conn, "bob", 1, settings=Settings(fair_share=False))
    assert queue.get_queue(conn, Q).job_ids == ids and queue.queue_stats(conn, Q).backlogged == 0


# -- with real workers --------------------------------------------------------------------


def _sleepy(settings, tmp_path, seconds):
    settings.pipeline = pipelines.write(tmp_path, "sleepy.sh", pipelines.SLEEPY)
    trace = tmp_path / "trace"
    return trace, {"PIPEQ_TEST_SLEEP": seconds, "PIPEQ_TEST_TRACE": trace}


def _submit_as(conn, settings, owner, n):
    """Submit through enqueue_run with an owner (as the API will once it knows principals)."""
    out = []
    for _ in range(n):
        job_id = uuid.uuid4().hex
        (settings.data_dir / "jobs" / job_id / "inputs").mkdir(parents=True)
        (settings.data_dir / "jobs" / job_id / "inputs" / "r").write_text(">r\nACGT\n")
        meta = {"owner": owner, "attempt": 0, "inputs": {"reads": [], "reference": "r"}}
        queue.enqueue_run(conn, settings.queue, job_id, {"reads": [], "reference": "r", "sample": None}, meta=meta,
                          retries=settings.retries, ttl=settings.job_ttl, settings=settings)
        out.append(job_id)
    return out


def _starts(trace):
    if not trace.exists():
        return []
    return [line.split()[3].split("/")[-3] for line in trace.read_text().splitlines() if line.startswith("start")]


def test_a_single_run_of_b_is_not_held_behind_a_burst_of_a(conn, settings, workers, tmp_path):
    trace, env = _sleepy(settings, tmp_path, 2)
    a = _submit_as(conn, settings, "alice", 12)
    workers.start(**env)
    workers.start(**env)
    wait_for(lambda: len(_starts(trace)) >= 2, timeout=30, what="two of alice's jobs running")
    (b,) = _submit_as(conn, settings, "bob", 1)
    wait_for(lambda: b in _starts(trace), timeout=30, what="bob's job started")
    # started right after the job at the queue's head (chosen before bob came): 4th at most
    assert _starts(trace).index(b) <= 3, _starts(trace)
    assert set(_starts(trace)) <= set(a) | {b}


def test_a_lone_user_gets_every_worker(conn, settings, workers, tmp_path):
    trace, env = _sleepy(settings, tmp_path, 3)
    _submit_as(conn, settings, "alice", 6)
    for _ in range(3):
        workers.start(**env)
    wait_for(lambda: queue.queue_stats(conn, settings.queue).running == 3, timeout=30, what="three jobs running at once")


def test_a_killed_worker_s_job_is_recovered_and_its_slot_kept(conn, settings, workers, tmp_path):
    trace, env = _sleepy(settings, tmp_path, 4)
    settings.quota_active_jobs = 5
    a = _submit_as(conn, settings, "alice", 2)
    b = _submit_as(conn, settings, "bob", 1)
    w = workers.start(**env)
    wait_for(lambda: len(_starts(trace)) >= 1, timeout=30, what="a job running")
    first = _starts(trace)[0]
    os.killpg(w.pid, signal.SIGKILL)
    w.wait()
    workers.start(**env)
    # the lost job runs again (requeued at the head once its lease is found expired; a job
    # the feed put in the queue before may still go first), and every job finishes
    wait_for(lambda: all(queue.fetch_job(conn, j).get_status().value == "finished" for j in a + b), timeout=60,
             what="every job finished")
    starts = _starts(trace)
    assert starts[0] == first and starts.count(first) == 2, starts
    assert sorted(set(starts)) == sorted(set(a + b)) and len(starts) == len(a + b) + 1, starts
    assert queue.fetch_job(conn, first).meta["attempt"] == 2
    assert quotas.usage(conn, "alice", (), settings)["active_jobs"] == 0


def test_api_positions_and_cancel_of_a_backlogged_run(client, dataset, conn, settings):
    ids = [submit(client, dataset, sample=f"S{i}") for i in range(4)]
    assert [status(client, j)["position"] for j in ids] == [0, 1, 2, 3]
    r = client.delete(f"/jobs/{ids[2]}")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    assert [status(client, j)["position"] for j in (ids[0], ids[1], ids[3])] == [0, 1, 2]
    assert queue.queue_stats(conn, settings.queue).queued == 3
    assert quotas.usage(conn, "anonymous", (), settings)["active_jobs"] == 3
    until(client, ids[2], timeout=1)
