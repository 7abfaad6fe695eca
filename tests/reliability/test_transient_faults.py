"""Transient Redis faults through a real fault injector (toxiproxy) and a stalled
redis-server (SIGSTOP/SIGCONT), over real pipeline.sh runs: every accepted job ends once,
no pipeline runs twice, no finished run is thrown away. Prints the figures that
docs/reliability.md quotes (``pytest -s tests/reliability/test_transient_faults.py``)."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from rq import Worker
from rq.job import Job

from tests.conftest import ROOT, wait_for
from tests.support import pipelines

pytestmark = pytest.mark.reliability

JOBS, POOL = 20, 3

# The real pipeline.sh, with a trace of its runs and (with PIPEQ_TEST_GATE) a gate after a
# successful run, so that a fault can be timed to fall on the publish step that follows.
TRACED = f"""#!/usr/bin/env bash
args=("$@")
while [ $# -gt 0 ]; do case "$1" in --outdir) outdir=$2; shift 2 ;; *) shift ;; esac; done
echo "start $outdir" >> "$PIPEQ_TEST_TRACE"
{ROOT / "pipeline.sh"} "${{args[@]}}"
rc=$?
echo "end $rc $outdir" >> "$PIPEQ_TEST_TRACE"
if [ -n "${{PIPEQ_TEST_GATE:-}}" ] && [ $rc = 0 ]; then
  gate="$PIPEQ_TEST_GATE/$(echo "$outdir" | tr / _)"
  touch "$gate.ready"
  for _ in $(seq 200); do [ -e "$gate.go" ] && break; sleep 0.05; done
fi
exit $rc
"""


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    """One 3 kb contig at 10x: pipeline.sh runs in under 2 s."""
    from tests.support.simdata import make_dataset

    return make_dataset(tmp_path_factory.mktemp("small"), seed=3, n_snps=2, contig_lengths=(3000,), depth=10)


def _files(dataset):
    files = [("reads", (p.name, p.read_bytes())) for p in dataset.reads]
    return files + [("reference", (dataset.reference.name, dataset.reference.read_bytes()))]


class Faults:
    """Injects one kind of fault, or all of them in turn ("mixed"), from threads until
    stopped; one fault at a time (each followed by a short calm, so that they do not add up
    past the lease), and Redis is always left healthy."""

    KINDS = ("latency", "resets", "publish_blackhole", "sigstop")

    def __init__(self, kind: str, proxy, redis_server, gate: Path):
        self.kind, self.proxy, self.redis_server, self.gate = kind, proxy, redis_server, gate
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.rng = random.Random(15)
        loops = {"publish_blackhole": [self._publish_loop], "mixed": [self._rotation, self._publish_loop]}
        self.threads = [threading.Thread(target=f, daemon=True) for f in loops.get(kind, [self._rotation])]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        for t in self.threads:
            t.join(timeout=20)
        for r in self.gate.glob("*.ready"):  # release any run still at the gate
            r.with_suffix(".go").touch()

    def _rotation(self):
        kinds = itertools.cycle([k for k in ("latency", "resets", "sigstop") if self.kind in (k, "mixed")])
        while not self.done.wait(self.rng.uniform(0.5, 1.5)):
            kind = next(kinds)
            with self.lock:
                if self.done.is_set():
                    return
                getattr(self, kind)()
                self.counts[kind] += 1
                self.done.wait(1.5)

    def latency(self):
        # a spike of 1-3 s on every reply, for 1-2 s
        with self.proxy.toxic("latency", latency=self.rng.randint(1000, 3000)):
            self.done.wait(self.rng.uniform(1.0, 2.0))

    def resets(self):
        # every client connection is reset (TCP RST) as it next sends
        with self.proxy.toxic("reset_peer", stream="upstream", timeout=0):
            self.done.wait(0.3)

    def sigstop(self):
        # redis-server itself stalls for 1.5 s (then runs for 1.5 s: the calm after each fault)
        pid = self.redis_server.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            self.done.wait(1.5)
        finally:
            os.kill(pid, signal.SIGCONT)

    def _publish_loop(self):
        # a 3 s blackhole each time pipelines have ended and their workers are about to publish
        while not self.done.wait(0.05):
            if not any(self.gate.glob("*.ready")):
                continue
            with self.lock:
                self.done.wait(0.3)  # the runs that end about together share one blackhole
                ready = sorted(self.gate.glob("*.ready"))
                with self.proxy.toxic("timeout", stream="downstream", timeout=0):
                    self.counts["publish_blackhole"] += 1
                    for r in ready:
                        r.with_suffix(".go").touch()
                        r.unlink()
                    self.done.wait(3.0)
                self.done.wait(2.0)


#: The mixed run is part of every run of the suite; one run per kind of fault, for the
#: figures in docs/reliability.md, with PIPEQ_FAULTS_EACH=1.
EACH = os.environ.get("PIPEQ_FAULTS_EACH") == "1"


@pytest.mark.parametrize("kind", ["mixed", *[pytest.param(k, marks=pytest.mark.skipif(not EACH, reason="PIPEQ_FAULTS_EACH=1 runs each kind alone"))
                                              for k in Faults.KINDS]])
def test_transient_faults_lose_nothing_and_run_nothing_twice(kind, redis_server, redis_proxy, conn, settings, make_client, workers, small_dataset, tmp_path):
    trace, gate = tmp_path / "trace", tmp_path / "gate"
    gate.mkdir()
    settings.pipeline = pipelines.write(tmp_path, "traced.sh", TRACED)
    # a lease well past the longest fault (a 3 s blackhole, 3 s of latency), as in production
    settings.lease_seconds, settings.threads = 8, 1
    api_settings = settings.model_copy()  # the API talks to Redis directly: this test is about workers
    settings.redis_url = redis_proxy.url
    logs = []
    with make_client(api_settings) as client:
        ids = [client.post("/run_pipeline", files=_files(small_dataset)).json()["job_id"] for _ in range(JOBS)]
        env = dict(PIPEQ_TEST_TRACE=trace, PIPEQ_TEST_GATE=gate if kind in ("publish_blackhole", "mixed") else "")
        for n in range(POOL):
            logs.append(tmp_path / f"w{n}.log")
            workers.start(f"{kind}-w{n}", log=logs[-1], **env)
        t0 = time.monotonic()
        with Faults(kind, redis_proxy, redis_server, gate) as faults:
            def ended():
                return all(conn.hget(Job.key_for(i), "status") in (b"finished", b"failed", b"stopped") for i in ids)

            with contextlib.suppress(AssertionError):
                wait_for(ended, timeout=100, interval=0.5, what="every job to end")
        took = time.monotonic() - t0
        statuses = {i: client.get(f"/job_status/{i}").json() for i in ids}

    starts, ends = Counter(), Counter()
    successes: dict[str, list[str]] = {}
    for line in trace.read_text().splitlines():
        job_id, attempt = re.search(r"/jobs/([0-9a-f]{32})/work/(attempt-\d+)", line).groups()
        if line.startswith("start"):
            starts[job_id] += 1
        elif line.split()[1] == "0":
            successes.setdefault(job_id, []).append(attempt)
    finished = [i for i in ids if statuses[i]["status"] == "finished"]
    lost = [i for i in ids if statuses[i]["status"] not in ("finished", "failed", "stopped")]
    twice = [i for i in ids if starts[i] > 1]
    # a pipeline that succeeded but whose results are not the job's: every success beyond
    # the one that was published, and any success of a job that did not finish
    discarded = [(i, a) for i, done in successes.items() for a in (done[1:] if i in finished else done)]
    not_finished = {i: statuses[i]["status"] for i in ids if i not in finished}
    attempts = Counter(statuses[i]["attempt"] for i in ids)
    text = "\n".join(p.read_text(errors="replace") for p in logs if p.exists())
    retried = len(re.findall(r"retrying within the lease|lease not renewed|could not connect to Redis|heartbeat not sent", text))
    print(f"\n{kind}: {len(finished)}/{JOBS} finished, {len(lost)} lost, {len(twice)} ran twice, "
          f"{len(discarded)} results discarded; faults {dict(sorted(faults.counts.items()))} in {took:.1f}s; "
          f"retries seen: {retried} transient Redis errors retried by workers, attempts per job {dict(sorted(attempts.items()))}")
    assert (len(finished), len(lost), len(twice), len(discarded)) == (JOBS, 0, 0, 0), (not_finished, twice, discarded)
    assert set(faults.counts) == ({kind} if kind != "mixed" else set(Faults.KINDS)), faults.counts
    assert all(statuses[i]["attempt"] == 1 for i in ids)
    assert all("report.json" in statuses[i]["result"]["files"] for i in ids)
    # a fault is handled or retried, never an unhandled error: no traceback in any worker's log
    tb = text.find("Traceback")
    assert tb < 0, f"a worker logged a traceback under {kind}:\n{text[max(0, tb - 500):tb + 3000]}"


def test_idle_workers_take_jobs_within_seconds_after_an_outage(redis_proxy, conn, settings, make_client, workers, small_dataset, tmp_path):
    """RQ backs off up to 60 s between reconnections of an idle worker; pipeq's retry every
    2 s at most, so a job submitted as Redis comes back starts within seconds."""
    settings.pipeline = pipelines.write(tmp_path, "pipe.sh", pipelines.SLEEPY)
    api_settings = settings.model_copy()
    settings.redis_url = redis_proxy.url
    log = tmp_path / "w.log"
    workers.start("idle", log=log, PIPEQ_TEST_SLEEP=0)
    wait_for(lambda: conn.exists(Worker.redis_worker_namespace_prefix + "idle"), timeout=10, what="the worker to register")
    redis_proxy.disable()
    time.sleep(9)  # RQ's own backoff would wait 8 s after the try at 7 s (1 + 2 + 4)
    redis_proxy.enable()
    with make_client(api_settings) as client:
        t0 = time.monotonic()
        job_id = client.post("/run_pipeline", files=_files(small_dataset)).json()["job_id"]
        wait_for(lambda: client.get(f"/job_status/{job_id}").json()["status"] != "queued", timeout=30, interval=0.1, what="the job to start")
        waited = time.monotonic() - t0
    print(f"\nafter a 9 s outage an idle worker took a new job in {waited:.1f}s")
    assert waited < 4, f"dispatch resumed after {waited:.1f}s"


def test_api_during_stalls_answers_202_or_503_and_keeps_its_word(redis_proxy, conn, settings, make_client, small_dataset):
    """Submissions while Redis stalls (replies held past the API's timeout, or delayed):
    each gets 202 or 503, never 500; every 202 is a job that exists with its inputs, and
    every 503 left nothing on disk."""
    settings.redis_url = redis_proxy.url
    answers: list[tuple[int, str | None]] = []
    done = threading.Event()

    def stalls():
        rng = random.Random(3)
        first = True  # one blackhole surely past the API's 5 s timeout: at least one 503
        while not done.is_set():
            kind = "timeout" if first else rng.choice(["timeout", "latency"])
            with redis_proxy.toxic(kind, **({"timeout": 0} if kind == "timeout" else {"latency": rng.randint(1000, 3000)})):
                done.wait(6.5 if first else rng.uniform(2.0, 6.0))
            first = False
            done.wait(rng.uniform(0.3, 1.5))

    with make_client(raise_server_exceptions=False) as client:
        t = threading.Thread(target=stalls, daemon=True)
        t.start()
        deadline = time.monotonic() + 12
        try:
            while time.monotonic() < deadline:
                r = client.post("/run_pipeline", files=_files(small_dataset))
                answers.append((r.status_code, r.json().get("job_id") if r.status_code == 202 else None))
        finally:
            done.set()
            t.join(timeout=15)
    codes = Counter(c for c, _ in answers)
    accepted = {j for c, j in answers if c == 202}
    on_disk = {p.name for p in (settings.data_dir / "jobs").iterdir()}
    print(f"\nAPI while Redis stalls: {len(answers)} submissions, {dict(sorted(codes.items()))}")
    assert set(codes) <= {202, 503} and codes[503] > 0 and codes[202] > 0, codes
    assert all(conn.exists(Job.key_for(j)) for j in accepted)
    assert on_disk == accepted, (on_disk - accepted, accepted - on_disk)


def test_scaler_holds_workers_while_redis_stalls_and_recovers(redis_proxy, conn, settings, make_client, small_dataset, tmp_path):
    """The scaling loop (pipeq dev's supervisor: the same policy as the operator) with its
    Redis link blackholed: it holds its busy workers instead of scaling down blind, and
    scales again by itself once Redis answers."""
    from pipeq.dev import Supervisor
    from tests.conftest import settings_env

    settings.pipeline = pipelines.write(tmp_path, "pipe.sh", pipelines.SLEEPY)
    settings.min_workers, settings.max_workers, settings.scale_down_delay = 0, 2, 0.5
    env = settings_env(settings, PIPEQ_TEST_SLEEP=30)  # busy throughout; the workers talk to Redis directly
    api_settings = settings.model_copy()
    settings.redis_url = redis_proxy.url
    sup = Supervisor(settings, env)
    try:
        with make_client(api_settings) as client:
            ids = [client.post("/run_pipeline", files=_files(small_dataset)).json()["job_id"] for _ in range(2)]
            wait_for(lambda: sup.step() and len(sup.workers) == 2 and
                     all(client.get(f"/job_status/{i}").json()["status"] == "started" for i in ids),
                     timeout=30, interval=0.2, what="2 busy workers")
            held = []
            with redis_proxy.toxic("timeout", stream="downstream", timeout=0):
                t0 = time.monotonic()
                while time.monotonic() - t0 < 6:
                    decision = sup.step()
                    held.append((decision, sum(not w.stopping for w in sup.workers.values())))
            assert held and all(d is None and n == 2 for d, n in held), held
            assert not sup.redis_ok
            recovered = wait_for(lambda: sup.step(), timeout=10, interval=0.2, what="the scaler to decide again")
            assert sup.redis_ok and recovered.desired == 2, recovered
            print(f"\nscaler while Redis stalled: {len(held)} polls held 2 workers; decided again after the stall: {recovered.reason}")
    finally:
        sup.stop_all(grace=2)
