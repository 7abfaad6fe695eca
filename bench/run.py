"""pipeq against the plain FastAPI + RQ version (bench/baseline/), side by side, in one run.

    python -m bench.run [--quick] [--only submission,status,dispatch,fleet,growth] [--out bench/results]

One real redis-server (pipeq.redis_server.RedisServer, AOF on as in the chart) serves both
sides, each on its own queue and data folder. Load runs alternate between the sides, so
noise from a shared machine hits both, and the figures are ratios pipeq / baseline.
Each benchmark prints a markdown table; all of them and the fleet plot go to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
from rq.job import Job

from bench import harness, history
from bench.harness import percentile, table, wrk
from pipeq import queue as pq_queue
from pipeq.redis_server import RedisServer

ORDER = ("pipeq", "baseline")
#: mean pause of each of the 32 "thinking" clients before each submission (exponential): they
#: offer ~150 submissions/s, below what either app serves, so the latency is the service's
#: own and not the queue a closed loop at full tilt builds (32 / throughput, Little's law)
THINK_MS = 200


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="pipeq-bench-"))
        self.redis = RedisServer(self.work / "redis").start()
        self.conn = pq_queue.connect(self.redis.url)
        self.sides = harness.make_sides(self.redis.url, self.work)
        self.body, self.boundary, self.files = harness.make_upload(self.work)
        self.tables: list[str] = []
        self.results: dict = {"machine": machine(), "started": datetime.now(timezone.utc).isoformat()}
        self.seconds = 2.0 if self.quick else float(args.seconds)
        self.rounds = 1 if self.quick else args.rounds

    # ---- helpers ----
    def emit(self, md: str) -> None:
        print("\n" + md, flush=True)
        self.tables.append(md)

    def post_env(self):
        return {"BENCH_MODE": "post", "BENCH_BODY": str(self.body), "BENCH_BOUNDARY": self.boundary}

    def ids_env(self, ids: list[str], prefix: str):
        f = self.work / f"ids-{time.monotonic_ns()}.txt"
        f.write_text("\n".join(ids) + "\n")
        return {"BENCH_MODE": "ids", "BENCH_IDS": str(f), "BENCH_PREFIX": prefix}

    def alternate(self, fn, rounds: int | None = None) -> dict[str, list]:
        """Run ``fn(side)`` for both sides, ``rounds`` times, swapping who goes first each round."""
        got = {n: [] for n in ORDER}
        for r in range(rounds or self.rounds):
            for name in (ORDER if r % 2 == 0 else ORDER[::-1]):
                got[name].append(fn(self.sides[name]))
        return got

    def submit(self, client: httpx.Client, side) -> tuple[str, float]:
        files = [("reads", (n, self.files[n])) for n in sorted(self.files) if ".fq" in n]
        files += [("reference", (n, self.files[n])) for n in self.files if n.endswith(".fa")]
        r = client.post(side.url + "/run_pipeline", files=files, data={"sample": "S1"})
        t = time.time()
        r.raise_for_status()
        return r.json()["job_id"], t

    # ---- 1 + 2 + 5: submission and status, as history grows ----
    def http(self, levels: list[int]) -> None:
        rows_sub, rows_st, rows_jobs, rows_client = [], [], [], []
        more_processes = ""
        for level in levels:
            self.conn.flushdb()
            t0 = time.monotonic()
            if level:
                for name in ORDER:
                    history.populate(self.conn, self.sides[name].queue, level, pipeq=name == "pipeq")
            print(f"-- history: {level} past jobs per side ({time.monotonic() - t0:.1f} s to write)", flush=True)
            # status targets: finished jobs with a result, and queued jobs at the tail of the queue
            finished = {n: history.populate(self.conn, self.sides[n].queue, 64, pipeq=n == "pipeq", with_result=True)
                        for n in ORDER}
            for conns in ([1, 32] if level == 0 else [32]):
                res = self.alternate(lambda s: wrk(s.url + "/run_pipeline", connections=conns, seconds=self.seconds,
                                                   env=self.post_env(), server_pid=s.api.pid))
                rows_sub.append(self.ratio_row(f"{level}", f"{conns}", res))
                self.results.setdefault("submission", []).append({"history": level, "clients": conns, **{n: [x.row() for x in v] for n, v in res.items()}})
                rows_client.append([f"POST, {conns} clients, {level} past", *self.cpu_cells(res)])
            if level == 0:
                think = {**self.post_env(), "BENCH_THINK_MS": str(THINK_MS)}

                def thinking(s):
                    # the runs at full tilt just wrote ~0.5 GB of uploads: let the disk write them
                    # back first, or whichever side comes first measures that writeback's stalls
                    os.sync()
                    return wrk(s.url + "/run_pipeline", connections=32, seconds=self.seconds, env=think, server_pid=s.api.pid)

                res = self.alternate(thinking)
                rows_sub.append(self.ratio_row(f"{level}", f"32 thinking (mean pause {THINK_MS} ms)", res))
                self.results.setdefault("submission", []).append({"history": level, "clients": 32, "think_ms": THINK_MS, **{n: [x.row() for x in v] for n, v in res.items()}})
                rows_client.append([f"POST, 32 thinking clients, {level} past", *self.cpu_cells(res)])
                more_processes = self.processes(rows_client)
            queued = {n: [i.decode() for i in self.conn.lrange(pq_queue.get_queue(self.conn, self.sides[n].queue).key, -64, -1)] for n in ORDER}
            qlen = {n: pq_queue.get_queue(self.conn, self.sides[n].queue).count for n in ORDER}
            for kind, ids in (("finished", finished), ("queued", queued)):
                res = self.alternate(lambda s: wrk(s.url + "/", connections=32, seconds=self.seconds,
                                                   env=self.ids_env(ids[s.name], "/job_status/"), server_pid=s.api.pid))
                rows_st.append(self.ratio_row(f"{level}", f"{kind}" + (f" (tail of {qlen['pipeq']}/{qlen['baseline']})" if kind == "queued" else ""), res))
                self.results.setdefault("status", []).append({"history": level, "kind": kind, **{n: [x.row() for x in v] for n, v in res.items()}})
                rows_client.append([f"GET status {kind}, 32 clients, {level} past", *self.cpu_cells(res)])
            pq = self.sides["pipeq"]
            for what, path in (("GET /jobs", "/jobs"), ("GET /jobs?offset=5000", "/jobs?offset=5000"), ("GET /metrics", "/metrics")):
                r = wrk(pq.url + path, connections=8, seconds=max(1.0, self.seconds / 2), env={}, server_pid=pq.api.pid)
                rows_jobs.append([level, what, r.rps, r.p50_ms, r.p99_ms, r.non2xx + r.errors])
            info = self.conn.info("memory")
            rows_jobs.append([level, "Redis used_memory MB", info["used_memory"] / 1e6, "", "", ""])
        # the client is not the bottleneck: a trivial endpoint at the same concurrency
        triv = self.alternate(lambda s: wrk(s.url + "/healthz", connections=32, seconds=self.seconds, env={}, server_pid=s.api.pid), rounds=1)
        rows_client.append(["GET /healthz (trivial), 32 clients", *self.cpu_cells(triv)])
        self.results["trivial"] = {n: [x.row() for x in v] for n, v in triv.items()}
        hdr = ["past jobs", "clients", "pipeq req/s", "baseline req/s", "ratio", "pipeq p50 ms", "pipeq p99 ms", "baseline p50 ms", "baseline p99 ms", "errors/non-2xx"]
        self.emit(table("1. Submission: POST /run_pipeline (2 × 50 KB FASTQ.gz + 20 KB FASTA)", hdr, rows_sub))
        if more_processes:
            self.emit(more_processes)
        hdr[1] = "job"
        self.emit(table("2. Status: GET /job_status/{id}, 32 clients", hdr, rows_st))
        self.emit(table("5. Cost growth: pipeq-only endpoints (8 clients) and Redis memory", ["past jobs per side", "request", "req/s", "p50 ms", "p99 ms", "errors/non-2xx"], rows_jobs))
        self.emit(table("Load tool check: wrk's CPU (share of one core) and rates", ["run", "pipeq req/s", "pipeq API CPU", "wrk CPU (pipeq)", "baseline req/s", "baseline API CPU", "wrk CPU (baseline)"], rows_client))

    @staticmethod
    def med(vals):
        return percentile(vals, 0.5)

    def processes(self, rows_client: list) -> str:
        """1b. Submission at 32 clients with two API processes per side (pipeq
        PIPEQ_API_WORKERS=2, the baseline ``uvicorn --workers 2``), against one each."""
        post = lambda s: wrk(s.url + "/run_pipeline", connections=32, seconds=self.seconds, env=self.post_env(), server_pid=s.api.pid)
        # the 32-client run just made with one process per side (not the thinking clients)
        one = next(r for r in reversed(self.results["submission"]) if r["clients"] == 32 and "think_ms" not in r)
        for side in self.sides.values():
            side.stop_api()
            side.start_api(processes=2)
            wrk(side.url + "/run_pipeline", connections=32, seconds=2, env=self.post_env())  # warm both processes
        try:
            two = self.alternate(post)
        finally:
            for side in self.sides.values():
                side.stop_api()
                side.start_api()
        rows_client.append(["POST, 32 clients, 2 API processes per side", *self.cpu_cells(two)])
        med = lambda runs: self.med([r["rps"] for r in runs])
        p1, b1 = med(one["pipeq"]), med(one["baseline"])
        p2, b2 = self.med([x.rps for x in two["pipeq"]]), self.med([x.rps for x in two["baseline"]])
        self.results["processes"] = {"one": {"pipeq": p1, "baseline": b1}, "two": {n: [x.row() for x in v] for n, v in two.items()}}
        rows = [
            ["1 each", p1, b1, f"{p1 / b1:.2f}×", "", "", ""],
            ["2 each", p2, b2, f"{p2 / b2:.2f}×", self.med([x.p99_ms for x in two["pipeq"]]), self.med([x.p99_ms for x in two["baseline"]]),
             sum(x.errors + x.non2xx for v in two.values() for x in v)],
            ["pipeq 2, baseline 1", p2, b1, f"{p2 / b1:.2f}×", "", "", ""],
        ]
        return table("1b. Submission with more API processes: POST /run_pipeline, 32 clients, 0 past jobs",
                     ["API processes", "pipeq req/s", "baseline req/s", "ratio", "pipeq p99 ms", "baseline p99 ms", "errors/non-2xx"], rows)

    def ratio_row(self, a, b, res):
        p, q = res["pipeq"], res["baseline"]
        prps, brps = self.med([x.rps for x in p]), self.med([x.rps for x in q])
        return [a, b, prps, brps, f"{prps / brps:.2f}×",
                self.med([x.p50_ms for x in p]), self.med([x.p99_ms for x in p]),
                self.med([x.p50_ms for x in q]), self.med([x.p99_ms for x in q]),
                sum(x.errors + x.non2xx for x in p + q)]

    def cpu_cells(self, res):
        p, q = res["pipeq"], res["baseline"]
        return [self.med([x.rps for x in p]), f"{self.med([x.server_cpu for x in p]):.0%}", f"{self.med([x.client_cpu for x in p]):.0%}",
                self.med([x.rps for x in q]), f"{self.med([x.server_cpu for x in q]):.0%}", f"{self.med([x.client_cpu for x in q]):.0%}"]

    # ---- 3: dispatch latency ----
    def dispatch(self) -> None:
        n = 30 if self.quick else self.args.dispatch_jobs
        self.conn.flushdb()
        pipeline = harness.write_pipeline(self.work / "first-line.sh", 0)
        traces = {}
        for name in ORDER:
            side = self.sides[name]
            traces[name] = self.work / f"dispatch-{name}.trace"
            traces[name].touch()
            side.start_worker({"PIPEQ_PIPELINE": str(pipeline), "BASELINE_PIPELINE": str(pipeline), "BENCH_TRACE": str(traces[name])})
        time.sleep(3)  # both workers registered and idle
        lat = {n: [] for n in ORDER}
        with httpx.Client(timeout=30) as client:
            for i in range(n):
                for name in (ORDER if i % 2 == 0 else ORDER[::-1]):
                    side = self.sides[name]
                    job_id, t202 = self.submit(client, side)
                    first = wait_trace(traces[name], job_id, "first")
                    lat[name].append((first - t202) * 1000)
                    wait_final(self.conn, job_id)
                    time.sleep(0.05)  # the worker is back in its BLPOP
        for side in self.sides.values():
            side.stop_workers()
        rows = [[name, len(v), percentile(v, 0.5), percentile(v, 0.95), max(v)] for name, v in lat.items()]
        rows.append(["ratio pipeq/baseline", "", f"{percentile(lat['pipeq'], .5) / percentile(lat['baseline'], .5):.2f}×",
                     f"{percentile(lat['pipeq'], .95) / percentile(lat['baseline'], .95):.2f}×", ""])
        self.results["dispatch"] = lat
        self.emit(table("3. Dispatch: 202 → the pipeline's first line, one idle worker", ["worker", "jobs", "p50 ms", "p95 ms", "max ms"], rows))
        self.plot_dispatch(lat)

    # ---- 4: fleet ----
    def fleet(self) -> None:
        jobs, sleep = (20, 2.0) if self.quick else (self.args.fleet_jobs, 5.0)
        pipeline = harness.write_pipeline(self.work / f"sleep-{sleep}.sh", sleep)
        out = {}
        for name in ("baseline", "pipeq"):
            self.conn.flushdb()
            trace = self.work / f"fleet-{name}.trace"
            trace.touch()
            env = {"PIPEQ_PIPELINE": str(pipeline), "BASELINE_PIPELINE": str(pipeline), "BENCH_TRACE": str(trace)}
            with quiet(self.work / f"{name}-fleet.log"):  # the workers pipeq dev starts log to our stdout
                out[name] = (fleet_baseline if name == "baseline" else fleet_pipeq)(self, self.sides[name], env, jobs)
        b, p = out["baseline"], out["pipeq"]
        # a fixed pool costs its 10 workers all the time: over the same window as pipeq's
        b["ws_window"] = 10 * p["window"]
        rows = [
            ["baseline: 10 fixed rq workers", jobs, b["makespan"], b["ws_makespan"], b["ws_window"], 10],
            ["pipeq: autoscaled 0..10", jobs, p["makespan"], p["ws_makespan"], p["ws_window"], p["peak"]],
            ["ratio pipeq/baseline", "", f"{p['makespan'] / b['makespan']:.2f}×", f"{p['ws_makespan'] / b['ws_makespan']:.2f}×", f"{p['ws_window'] / b['ws_window']:.2f}×", ""],
        ]
        self.results["fleet"] = out
        self.emit(table(f"4. Fleet: a burst of {jobs} jobs of a {sleep:.0f} s pipeline (window {p['window']:.0f} s: burst start → pipeq back at 0 workers)",
                        ["pool", "jobs", "makespan s", "worker-s in makespan", "worker-s in window", "peak workers"], rows))
        self.plot_fleet(out)

    # ---- plots ----
    def plot_fleet(self, out) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
        for ax, name in zip(axes, ("baseline", "pipeq")):
            s = out[name]["series"]
            t = [x[0] for x in s]
            ax.step(t, [x[1] for x in s], where="post", label="queued")
            ax.step(t, [x[2] for x in s], where="post", label="running")
            ax.step(t, [x[3] for x in s], where="post", label="worker processes", linewidth=2)
            ax.axvline(out[name]["makespan"], color="grey", linestyle=":", label=f"last job ended ({out[name]['makespan']:.1f} s)")
            ax.set_ylabel("jobs / workers")
            ax.set_title({"baseline": "baseline: 10 fixed rq workers", "pipeq": "pipeq dev: autoscaled local pool (min 0, max 10)"}[name])
            ax.legend(loc="upper right", fontsize=8)
            ax.grid(alpha=0.3)
        axes[-1].set_xlabel("seconds since the burst started")
        fig.tight_layout()
        path = self.out / "fleet.png"
        fig.savefig(path, dpi=90)
        print(f"plot: {path}")

    def plot_dispatch(self, lat) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.5))
        for name, v in lat.items():
            v = sorted(v)
            ax.plot(v, [(i + 1) / len(v) for i in range(len(v))], label=name)
        ax.set_xlabel("202 → pipeline's first line, ms")
        ax.set_ylabel("fraction of jobs")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(self.out / "dispatch.png", dpi=90)

    def close(self) -> None:
        for side in self.sides.values():
            side.stop()
        self.redis.stop()
        shutil.rmtree(self.work, ignore_errors=True)


@contextlib.contextmanager
def quiet(log: Path):
    """Send this process's fds 1 and 2 (so its children's output) to ``log`` for a while."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "ab") as f:
        os.dup2(f.fileno(), 1), os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        os.close(saved[0]), os.close(saved[1])


def wait_trace(trace: Path, job_id: str, kind: str, timeout: float = 30) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in trace.read_text().splitlines():
            if line.startswith(kind + " ") and job_id in line:
                return float(line.split()[1])
        time.sleep(0.002)
    raise TimeoutError(f"job {job_id} did not start")


def wait_final(conn, job_id: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = conn.hget(Job.key_for(job_id), "status")
        if s in (b"finished", b"failed"):
            if s == b"failed":
                raise RuntimeError(f"job {job_id} failed")
            return s.decode()
        time.sleep(0.005)
    raise TimeoutError(f"job {job_id} did not end")


def ended_at(conn, job_id: str) -> float:
    v = conn.hget(Job.key_for(job_id), "ended_at").decode()
    return datetime.strptime(v, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def burst(bench: Bench, side, jobs: int) -> tuple[float, list[str]]:
    with httpx.Client(timeout=30) as client:
        t0 = time.time()
        ids = [bench.submit(client, side)[0] for _ in range(jobs)]
    return t0, ids


def fleet_baseline(bench: Bench, side, env, jobs: int) -> dict:
    side.start_worker(env, n=10)
    time.sleep(4)  # a fixed pool is up before the burst
    series, stop = [], threading.Event()
    t_sampler = time.time()
    sampler = threading.Thread(target=sample, args=(bench.conn, side.queue, t_sampler, series, stop, lambda: 10), daemon=True)
    sampler.start()
    t0, ids = burst(bench, side, jobs)
    for j in ids:
        wait_final(bench.conn, j, timeout=600)
    makespan = max(ended_at(bench.conn, j) for j in ids) - t0
    time.sleep(1)
    stop.set()
    sampler.join()
    side.stop_workers()
    series = [(t - (t0 - t_sampler), *rest) for t, *rest in series]
    return {"makespan": makespan, "ws_makespan": 10 * makespan, "series": series, "t0": t0}


def fleet_pipeq(bench: Bench, side, env, jobs: int) -> dict:
    from pipeq.dev import Supervisor
    from pipeq.settings import Settings

    settings = Settings(redis_url=bench.redis.url, queue=side.queue, data_dir=side.data_dir,
                        min_workers=0, max_workers=10, scale_down_delay=bench.args.scale_down_delay, poll_interval=0.25)
    sup = Supervisor(settings, dict(side.env, **env))
    sup.warm_up()  # as `pipeq dev` does at its start
    series, lifetimes, seen = [], {}, {}
    stop = threading.Event()
    t_sampler = time.time()

    def loop():
        while not stop.is_set():
            sup.step()
            now = time.time()
            for name in sup.workers:
                seen.setdefault(name, now)
            for name in list(seen):
                if name not in sup.workers and name not in lifetimes:
                    lifetimes[name] = (seen[name], now)
            time.sleep(settings.poll_interval)

    sampler = threading.Thread(target=sample, args=(bench.conn, side.queue, t_sampler, series, stop, lambda: len(sup.workers)), daemon=True)
    sampler.start()
    stepper = threading.Thread(target=loop, daemon=True)
    stepper.start()
    time.sleep(1)  # the supervisor runs with no workers (min 0) before the burst
    t0, ids = burst(bench, side, jobs)
    for j in ids:
        wait_final(bench.conn, j, timeout=600)
    makespan = max(ended_at(bench.conn, j) for j in ids) - t0
    deadline = time.monotonic() + bench.args.scale_down_delay + 30
    while (sup.workers or len(lifetimes) < len(seen)) and time.monotonic() < deadline:
        time.sleep(0.25)
    window = time.time() - t0
    stop.set()
    stepper.join()
    sampler.join()
    sup.stop_all()
    now = time.time()
    for name, start in seen.items():
        lifetimes.setdefault(name, (start, now))
    ws_window = sum(e - max(s, t0) for s, e in lifetimes.values())
    ws_makespan = sum(max(0.0, min(e, t0 + makespan) - max(s, t0)) for s, e in lifetimes.values())
    peak = max((x[3] for x in series), default=0)
    series = [(t - (t0 - t_sampler), *rest) for t, *rest in series]
    return {"makespan": makespan, "ws_makespan": ws_makespan, "ws_window": ws_window, "window": window,
            "peak": peak, "workers_started": len(seen), "series": series, "t0": t0}


def sample(conn, queue_name, t0, series, stop, workers) -> None:
    while not stop.is_set():
        try:
            st = pq_queue.queue_stats(conn, queue_name)
            series.append((time.time() - t0, st.queued, st.running, workers()))
        except Exception:
            pass
        time.sleep(0.1)


def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "?")
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2].removeprefix("v=")
    wrk_v = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split()[1] if shutil.which("wrk") else "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "redis": redis_v, "wrk": wrk_v,
            "load_before": os.getloadavg()[0]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: short loads, 30 dispatch jobs, a small fleet")
    ap.add_argument("--only", default="submission,dispatch,fleet", help="which parts (submission = 1, 2 and 5)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results")))
    ap.add_argument("--seconds", type=float, default=4.0, help="length of one load run")
    ap.add_argument("--rounds", type=int, default=2, help="load runs per side (alternating)")
    ap.add_argument("--levels", default="0,10000,100000", help="past jobs per side for the cost-growth runs")
    ap.add_argument("--dispatch-jobs", type=int, default=200)
    ap.add_argument("--fleet-jobs", type=int, default=60)
    ap.add_argument("--scale-down-delay", type=float, default=10.0)
    args = ap.parse_args(argv)
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: `PIPEQ_EXTRA_DEBS=wrk scripts/deps.sh` (make bench does it)")
    only = set(args.only.split(","))
    b = Bench(args)
    try:
        for side in b.sides.values():
            side.start_api()
        if "submission" in only:
            b.http([int(x) for x in args.levels.split(",")] if not args.quick else [0, 1000])
        if "dispatch" in only:
            b.dispatch()
        if "fleet" in only:
            b.fleet()
        b.results["finished"] = datetime.now(timezone.utc).isoformat()
        (b.out / "results.json").write_text(json.dumps(b.results, indent=1, default=str))
        m = b.results["machine"]
        head = (f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, Redis {m['redis']}, wrk {m['wrk']}; "
                f"load average before the run {m['load_before']:.1f}. Run {b.results['started'][:19]}Z.\n\n")
        (b.out / "tables.md").write_text(head + "\n".join(b.tables))
        print(f"\nresults: {b.out}/results.json, {b.out}/tables.md", flush=True)
    finally:
        print("removing the benchmark's job folders (slow on a volume with online discard)...", flush=True)
        b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
