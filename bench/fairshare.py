"""Quotas and the fair share (issue 22, figures 2-6), measured and compared in one run.

    python -m bench.fairshare [--tries 10] [--fifo-jobs 100] [--out bench/results/fairshare.md]

A redis-server of its own (AOF, appendfsync always, as in the chart), real `pipeq worker`
processes running the SLEEPY stand-in pipeline of tests/support/pipelines.py, and for
figure 2 a real `pipeq api` with 2 processes. Until identity lands (helper `auth`) every
submission through the API is owner "anonymous": so user A submits through the API, and
user B's submissions are `queue.enqueue_run` calls with `meta["owner"] = "bob"` from two
other processes at the same moment. Elsewhere the owners are set in the meta the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
from rq import worker_registration

from pipeq import queue
from pipeq.redis_server import RedisServer, free_port
from pipeq.settings import Settings
from tests.support import pipelines

ROOT = Path(__file__).resolve().parent.parent


class Rig:
    def __init__(self, work: Path):
        self.work = work
        self.redis = RedisServer(work / "redis").start()
        self.conn = queue.connect(self.redis.url)
        self.data = work / "data"
        self.pipeline = pipelines.write(work, "sleepy.sh", pipelines.SLEEPY)
        self.trace = work / "trace"

    def env(self, **extra) -> dict:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PIPEQ_REDIS_URL=self.redis.url, PIPEQ_DATA_DIR=str(self.data),
                   PIPEQ_PIPELINE=str(self.pipeline), PIPEQ_TEST_TRACE=str(self.trace), PIPEQ_MAINTENANCE_INTERVAL="1")
        env.update({k: str(v) for k, v in extra.items()})
        return env

    @contextmanager
    def workers(self, n: int, seconds: float):
        procs = [subprocess.Popen([sys.executable, "-m", "pipeq", "worker"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, env=self.env(PIPEQ_TEST_SLEEP=seconds, PIPEQ_WORKER_NAME=f"bench-{i}-{uuid.uuid4().hex[:6]}"))
                 for i in range(n)]
        try:
            wait(lambda: self.conn.scard(worker_registration.WORKERS_BY_QUEUE_KEY % Settings().queue) >= n, 30, "workers registered")
            yield procs
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            self.conn.flushall()

    def submit(self, owner: str, settings: Settings, groups=()) -> str:
        """One run of ``owner`` (its inputs stored as the API would), enqueued as the API does."""
        job_id = uuid.uuid4().hex
        inputs = self.data / "jobs" / job_id / "inputs"
        inputs.mkdir(parents=True)
        (inputs / "r").write_text(">r\nACGT\n")
        meta = {"owner": owner, "owner_groups": list(groups), "attempt": 0, "inputs": {"reads": [], "reference": "r"}}
        queue.enqueue_run(self.conn, settings.queue, job_id, {"reads": [], "reference": "r", "sample": None},
                          meta=meta, retries=2, ttl=3600, settings=settings)
        return job_id

    def starts(self) -> list[tuple[str, float]]:
        """(job id, start time) of every pipeline start so far, in order."""
        if not self.trace.exists():
            return []
        out = []
        for line in self.trace.read_text().splitlines():
            kind, _pid, t, outdir = line.split()[:4]
            if kind == "start":
                out.append((outdir.split("/")[-3], float(t)))
        return out

    def spans(self) -> list[tuple[float, float]]:
        start, spans = {}, []
        for line in self.trace.read_text().splitlines():
            kind, pid, t = line.split()[:3]
            if kind == "start":
                start[pid] = float(t)
            elif pid in start:
                spans.append((start.pop(pid), float(t)))
        return spans

    def drain(self, ids) -> None:
        """Cancel what still waits and wait for the running jobs to end."""

        for job in queue.fetch_jobs(self.conn, list(ids)):
            if job is not None and job.get_status().value == "queued":
                queue.cancel_queued(self.conn, job)
        wait(lambda: queue.queue_stats(self.conn, Settings().queue).running == 0
             and queue.queue_stats(self.conn, Settings().queue).queued == 0, 60, "the queue drained")
        time.sleep(0.3)  # the workers' end-of-job bookkeeping
        self.trace.unlink(missing_ok=True)

    def close(self):
        self.redis.stop()


def wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


# -- figure 2: the quota's 429s ------------------------------------------------------------

_BOB = """
import json, sys, threading, uuid
from pipeq import queue
from pipeq.settings import Settings
conn = queue.connect(sys.argv[1]); s = Settings(redis_url=sys.argv[1], quota_active_jobs=5)
conn.blpop("bench:go", timeout=60)
ok = []
def one():
    queue.enqueue_run(conn, s.queue, uuid.uuid4().hex, {"reads": [], "reference": "r"}, meta={"owner": "bob", "attempt": 0}, retries=1, ttl=600, settings=s)
    ok.append(1)
ts = [threading.Thread(target=one) for _ in range(int(sys.argv[2]))]
[t.start() for t in ts]; [t.join() for t in ts]
print(len(ok))
"""


def figure2(rig: Rig) -> dict:
    from bench.harness import make_upload

    body, boundary, _ = make_upload(rig.work)
    data = body.read_bytes()
    port = free_port()
    api = subprocess.Popen([sys.executable, "-m", "pipeq", "api"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=rig.env(PIPEQ_PORT=port, PIPEQ_API_WORKERS=2, PIPEQ_QUOTA_ACTIVE_JOBS=5))
    url = f"http://127.0.0.1:{port}"
    try:
        wait(lambda: _up(url), 30, "the API")
        bobs = [subprocess.Popen([sys.executable, "-c", _BOB, rig.redis.url, "3" if i else "2"], cwd=ROOT, stdout=subprocess.PIPE,
                                 text=True, env=rig.env()) for i in range(2)]
        codes, retry_after, bodies = [], set(), []
        barrier = threading.Barrier(50)

        def one():
            with httpx.Client(timeout=60) as c:
                barrier.wait()
                r = c.post(url + "/run_pipeline", content=data, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
            codes.append(r.status_code)
            if r.status_code == 429:
                retry_after.add(r.headers.get("retry-after"))
                bodies.append(r.json())

        threads = [threading.Thread(target=one) for _ in range(50)]
        for t in threads:
            t.start()
        rig.conn.rpush("bench:go", 1, 1)
        for t in threads:
            t.join()
        bob = sum(int(p.communicate(timeout=60)[0]) for p in bobs)
        folders = len(list((rig.data / "jobs").iterdir()))
    finally:
        api.terminate()
        api.wait(timeout=20)
    rig.conn.flushall()
    return {"accepted": codes.count(202), "refused_429": codes.count(429), "other": len(codes) - codes.count(202) - codes.count(429),
            "retry_after": sorted(retry_after), "body": bodies[0] if bodies else None, "bob_accepted": bob, "bob_submitted": 5,
            "job_folders": folders}


def _up(url):
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# -- figure 3: B's single run behind A's 100 -------------------------------------------------

def figure3(rig: Rig, tries: int, fifo_jobs: int, d: float = 3.0) -> dict:
    out = {}
    for label, settings, n, rounds in (("fair share", Settings(), 100, tries), ("FIFO (PIPEQ_FAIR_SHARE=false)", Settings(fair_share=False), fifo_jobs, 1)):
        waits = []
        with rig.workers(2, d):
            for _ in range(rounds):
                a = [rig.submit("alice", settings) for _ in range(n)]
                wait(lambda: len(rig.starts()) >= 2, 30, "two of alice's runs started")
                t0 = time.time()
                b = rig.submit("bob", settings)
                wait(lambda: b in dict(rig.starts()), 60 + n * d, "bob's run started")
                waits.append(dict(rig.starts())[b] - t0)
                rig.drain(a)
        out[label] = {"jobs_of_a": n, "tries": rounds, "p50": statistics.median(waits), "p95": pct(waits, 0.95), "max": max(waits)}
    return out


# -- figure 4: weights ----------------------------------------------------------------------

def figure4(rig: Rig, d: float = 0.5, workers: int = 3) -> dict:
    """3 workers: the rule shares running jobs, whole ones; with 2 workers 2:1 weights can
    only be 1:1 (one each) or 2:0, and the rule keeps 1:1 (docs/fair-share.md)."""
    out = {}
    for label, weights in (("1:1", {}), ("2:1", {"double": 2})):
        settings = Settings(fair_share_weights=weights)
        with rig.workers(workers, d):
            ids = []
            for _ in range(40):  # both backlogged from the start
                ids.append(rig.submit("alice", settings, groups=["double"]))
                ids.append(rig.submit("bob", settings))
            alice = set(ids[::2])
            wait(lambda: len(rig.starts()) >= 40, 120, "40 starts")
            first = [j for j, _ in rig.starts()[:40]]
            out[label] = sum(j in alice for j in first) / 40
            rig.drain(ids)
    return out


# -- figure 5: a lone user keeps every worker busy ----------------------------------------------

def figure5(rig: Rig, n: int = 12, d: float = 3.0) -> dict:
    """Busy = holding a job: from the worker's start of it to its end (RQ's started_at and
    ended_at), over workers × the span; and, for information, the pipelines' own run time
    (the trace), which also leaves out the worker's per-job work (inputs, fork, publish)."""

    out = {}
    for label, settings in (("fair share", Settings()), ("FIFO", Settings(fair_share=False))):
        with rig.workers(2, d):
            ids = [rig.submit("alice", settings) for _ in range(n)]
            wait(lambda: all(j.get_status().value == "finished" for j in queue.fetch_jobs(rig.conn, ids)), 60 + n * d, "every run ended")
            jobs = queue.fetch_jobs(rig.conn, ids)
            held = [(j.started_at.timestamp(), j.ended_at.timestamp()) for j in jobs]
            window = max(e for _, e in held) - min(s for s, _ in held)
            spans = rig.spans()
            pwindow = max(e for _, e in spans) - min(s for s, _ in spans)
            out[label] = {"held": sum(e - s for s, e in held) / (2 * window), "pipeline": sum(e - s for s, e in spans) / (2 * pwindow)}
            rig.drain(ids)
    return out


# -- figure 6: enqueue latency -------------------------------------------------------------------

def figure6(rig: Rig, n: int = 1000, rounds: int = 3) -> dict:
    """enqueue_run's latency, the sides interleaved call by call (each on a queue of its
    own): the fsync of appendfsync always varies over seconds on a shared disk, and would
    otherwise favour whichever side ran in a quiet second."""
    sides = {"fair share off": Settings(fair_share=False, queue="off"), "fair share on": Settings(queue="on"),
             "on, with quotas": Settings(queue="quotas", quota_active_jobs=10**6, quota_submissions_per_minute=10**6)}
    lat = {k: [] for k in sides}
    for _ in range(rounds):
        rig.conn.flushall()
        order = list(sides.items())
        for i in range(n):
            for label, s in order[i % 3:] + order[:i % 3]:  # rotated: no side always first after another
                t = time.perf_counter()
                queue.enqueue_run(rig.conn, s.queue, uuid.uuid4().hex, {"reads": [], "reference": "r"},
                                  meta={"owner": f"{s.queue}-user{i % 4}", "attempt": 0}, retries=2, ttl=3600, settings=s)
                lat[label].append((time.perf_counter() - t) * 1000)
    rig.conn.flushall()
    return {k: {"p50": statistics.median(v), "p95": pct(v, 0.95), "n": len(v)} for k, v in lat.items()}


def report(res: dict, args) -> str:
    f2, f3, f4, f5, f6 = (res[k] for k in ("2", "3", "4", "5", "6"))
    base = f6["fair share off"]["p50"]
    fair, fifo = f3["fair share"], f3["FIFO (PIPEQ_FAIR_SHARE=false)"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} by `make bench-fairshare` (`python -m bench.fairshare --tries {args.tries} --fifo-jobs {args.fifo_jobs}`) on {os.cpu_count()} cores.",
        "",
        "| # | figure | target | measured | ok |",
        "|---|---|---|---|---|",
        f"| 2 | cap 5, 50 concurrent submissions of one user through 2 API processes | 5 × 202, 45 × 429 | {f2['accepted']} × 202, {f2['refused_429']} × 429, {f2['other']} other; Retry-After {', '.join(map(str, f2['retry_after']))}; {f2['job_folders'] - f2['accepted']} folders of refused ones | {'yes' if (f2['accepted'], f2['refused_429']) == (5, 45) and f2['job_folders'] == 5 else 'NO'} |",
        f"| 2 | another user meanwhile (5 enqueue_run calls from 2 processes) | all accepted | {f2['bob_accepted']}/{f2['bob_submitted']} | {'yes' if f2['bob_accepted'] == f2['bob_submitted'] else 'NO'} |",
        f"| 3 | D = 3 s, 2 workers, A submits {fair['jobs_of_a']}, then B 1: B's wait to start, p95 of {fair['tries']} | ≤ D + 1 s = 4 s | p50 {fair['p50']:.2f} s, p95 {fair['p95']:.2f} s, max {fair['max']:.2f} s | {'yes' if fair['p95'] <= 4 else 'NO'} |",
        f"| 3 | the same with FIFO (fair share off), A submits {fifo['jobs_of_a']}, {fifo['tries']} try | ≈ {fifo['jobs_of_a'] // 2}·D = {fifo['jobs_of_a'] // 2 * 3} s | {fifo['p50']:.1f} s | — |",
        f"| 4 | two backlogged users, 3 workers, runs of 0.5 s, weights 1:1, share of A in 40 starts | 50 ± 10 % | {f4['1:1'] * 100:.0f} % | {'yes' if abs(f4['1:1'] - 0.5) <= 0.1 else 'NO'} |",
        f"| 4 | weights 2:1 | 67 ± 10 % | {f4['2:1'] * 100:.0f} % | {'yes' if abs(f4['2:1'] - 2 / 3) <= 0.1 else 'NO'} |",
        f"| 5 | a lone user, 2 workers, 12 runs of 3 s: time each worker holds a job / (workers × span) | ≥ 95 % | {f5['fair share']['held'] * 100:.1f} % (FIFO {f5['FIFO']['held'] * 100:.1f} %); pipelines running: {f5['fair share']['pipeline'] * 100:.1f} % (FIFO {f5['FIFO']['pipeline'] * 100:.1f} %) | {'yes' if f5['fair share']['held'] >= 0.95 else 'NO'} |",
    ]
    for label, v in f6.items():
        ratio = v["p50"] / base
        lines.append(f"| 6 | enqueue_run latency, {label} ({v['n']} calls, 4 owners) | within 10 % of off | p50 {v['p50']:.3f} ms, p95 {v['p95']:.3f} ms ({ratio:.2f}×) | {'yes' if ratio <= 1.1 else 'NO'} |")
    lines += ["", "The 429 body: `" + json.dumps(f2["body"]) + "`"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tries", type=int, default=10)
    ap.add_argument("--fifo-jobs", type=int, default=100)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fairshare.md")
    ap.add_argument("--only", default="2,3,4,5,6", help="the figures to measure again; the others are read from the .json beside --out")
    args = ap.parse_args(argv)
    saved = args.out.with_suffix(".json")
    res = json.loads(saved.read_text()) if saved.exists() else {}
    steps = {"6": lambda rig: figure6(rig), "2": figure2, "4": figure4, "5": figure5,
             "3": lambda rig: figure3(rig, args.tries, args.fifo_jobs)}
    with tempfile.TemporaryDirectory(prefix="pipeq-fairshare-") as tmp:
        rig = Rig(Path(tmp))
        try:
            for k, step in steps.items():
                if k in args.only.split(","):
                    res[k] = step(rig)
                    print(k, res[k], flush=True)
        finally:
            rig.close()
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(res, indent=1))
    md = report(res, args)
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
