"""Processes, data and the load tool for the benchmarks (see run.py)."""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pipeq.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
WRK_LUA = Path(__file__).with_name("wrk.lua")


def _proc_stats() -> dict[int, list[str]]:
    """The fields after the command name of /proc/<pid>/stat, for every live process."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            stats[int(stat.parent.name)] = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
    return stats


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process and its live children (an API with
    several processes is a supervisor and its workers), from /proc."""
    ticks = sum(int(f[11]) + int(f[12]) for p, f in _proc_stats().items() if p == pid or f[1] == str(pid))
    return ticks / os.sysconf("SC_CLK_TCK")


# ---- test data and pipelines ----------------------------------------------------------------

def make_upload(workdir: Path) -> tuple[Path, str, dict[str, bytes]]:
    """Two ~50 KB gzip FASTQ and a ~20 KB FASTA (tests/support/simdata.py), and the multipart
    body of a submission of them, written to a file for wrk. Returns (body, boundary, files)."""
    from tests.support.simdata import make_dataset

    ds = make_dataset(workdir / "sim", seed=11, depth=6.7)
    files = {p.name: p.read_bytes() for p in [*ds.reads, ds.reference]}
    boundary = uuid.uuid4().hex
    parts = []
    for field_name, p in [("reads", ds.reads[0]), ("reads", ds.reads[1]), ("reference", ds.reference)]:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{p.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode() + files[p.name] + b"\r\n"
        )
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="sample"\r\n\r\nS1\r\n--{boundary}--\r\n'.encode())
    body = workdir / "submission.body"
    body.write_bytes(b"".join(parts))
    return body, boundary, files


PIPELINE_HEAD = """#!/usr/bin/env bash
echo "first $EPOCHREALTIME $*" >> "$BENCH_TRACE"
while [ $# -gt 0 ]; do case "$1" in --outdir) outdir=$2; shift 2 ;; *) shift ;; esac; done
mkdir -p "$outdir"
"""
PIPELINE_TAIL = """
echo '{"sample": "S1", "variants": 0}' > "$outdir/report.json"
echo "PROGRESS 100 done"
echo "end $EPOCHREALTIME $outdir" >> "$BENCH_TRACE"
"""


def write_pipeline(path: Path, sleep: float) -> Path:
    """A stand-in for pipeline.sh: its first line appends a timestamp to $BENCH_TRACE
    (bash's $EPOCHREALTIME: no fork), then it sleeps ``sleep`` seconds."""
    path.write_text(PIPELINE_HEAD + (f"sleep {sleep}\n" if sleep else "") + PIPELINE_TAIL)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# ---- the two systems ------------------------------------------------------------------------

@dataclass
class Side:
    """One system under test: its API process, queue and data folder."""

    name: str
    queue: str
    data_dir: Path
    port: int
    env: dict[str, str]
    api_cmd: list[str]
    worker_cmd: list[str]
    api: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_api(self, processes: int = 1) -> None:
        """Start the API with ``processes`` processes on its port (pipeq: PIPEQ_API_WORKERS,
        the baseline: uvicorn's ``--workers``, as its user would run it)."""
        if processes > 1 and self.name == "baseline":
            cmd, env = self.api_cmd + ["--workers", str(processes)], self.env
        else:
            cmd, env = self.api_cmd, dict(self.env, PIPEQ_API_WORKERS=str(processes))
        self.api = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True,
                                    stdout=subprocess.DEVNULL, stderr=open(self.data_dir.parent / f"{self.name}-api.log", "ab"))
        deadline = time.monotonic() + 30
        wait_healthy(self.url, self.api, f"{self.name} API")
        if processes > 1:  # every process is up and done importing, not only the first one
            while len(_api_processes(self.api.pid)) < processes:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} API did not start {processes} processes")
                time.sleep(0.05)
            before = cpu_seconds(self.api.pid)  # the supervisor and its children
            while True:
                time.sleep(0.5)
                now = cpu_seconds(self.api.pid)
                if now - before < 0.05 or time.monotonic() > deadline:
                    break
                before = now

    def stop_api(self) -> None:
        if self.api:
            stop_group(self.api)

    def start_worker(self, extra_env: dict[str, str], n: int = 1) -> None:
        for i in range(n):
            env = dict(self.env, **extra_env)
            log = open(self.data_dir.parent / f"{self.name}-worker.log", "ab")
            self.workers.append(subprocess.Popen(self.worker_cmd + ([f"{self.name}-w{len(self.workers)}-{os.getpid()}"] if self.name == "baseline" else []),
                                                 env=env, cwd=ROOT, start_new_session=True, stdout=log, stderr=log))

    def stop_workers(self) -> None:
        for w in self.workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGTERM)
        for w in self.workers:
            try:
                w.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(w.pid, signal.SIGKILL)
                w.wait()
        self.workers.clear()

    def stop(self) -> None:
        self.stop_workers()
        self.stop_api()


def stop_group(proc: subprocess.Popen, timeout: float = 10) -> None:
    """End a process started in a session of its own, and its children: TERM, then KILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_healthy(url: str, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    """Wait until ``url``/healthz answers 200; RuntimeError if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)


def _api_processes(pid: int) -> list[int]:
    """The serving children of a multi-process uvicorn (not multiprocessing's resource tracker)."""
    kids = []
    for child, fields in _proc_stats().items():
        try:
            if fields[1] == str(pid) and b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes():
                kids.append(child)
        except OSError:
            continue
    return kids


def make_sides(redis_url: str, workdir: Path) -> dict[str, Side]:
    py = sys.executable
    base_env = dict(os.environ, PYTHONPATH=str(ROOT))
    pq_dir, bl_dir = workdir / "pipeq-data", workdir / "baseline-data"
    pq_dir.mkdir(parents=True, exist_ok=True)
    bl_dir.mkdir(parents=True, exist_ok=True)
    pq_port, bl_port = free_port(), free_port()
    pipeq = Side(
        "pipeq", "bench_pipeq", pq_dir, pq_port,
        dict(base_env, PIPEQ_REDIS_URL=redis_url, PIPEQ_QUEUE="bench_pipeq", PIPEQ_DATA_DIR=str(pq_dir),
             PIPEQ_PORT=str(pq_port), PIPEQ_HOST="127.0.0.1"),
        [py, "-m", "pipeq", "api"],
        [py, "-m", "pipeq", "worker"],
    )
    baseline = Side(
        "baseline", "bench_baseline", bl_dir, bl_port,
        dict(base_env, BASELINE_REDIS_URL=redis_url, BASELINE_QUEUE="bench_baseline", BASELINE_DATA_DIR=str(bl_dir)),
        [py, "-m", "uvicorn", "bench.baseline.app:app", "--host", "127.0.0.1", "--port", str(bl_port),
         "--log-level", "warning", "--no-access-log"],
        # a plain rq worker (forks a work horse per job), as RQ's documentation runs it
        [str(Path(py).with_name("rq")), "worker", "--url", redis_url, "--quiet", "bench_baseline", "--name"],
    )
    return {"pipeq": pipeq, "baseline": baseline}


# ---- the load tool --------------------------------------------------------------------------

@dataclass
class Load:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    non2xx: int
    client_cpu: float  # share of one core used by wrk
    server_cpu: float  # share of one core used by the API process

    def row(self) -> dict:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def wrk(url: str, *, connections: int, seconds: float, env: dict[str, str], server_pid: int | None = None) -> Load:
    """Run wrk (one thread) against ``url``; the Lua script reports the percentiles."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    s0 = cpu_seconds(server_pid) if server_pid else 0.0
    t0 = time.monotonic()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(WRK_LUA), url],
        env=dict(os.environ, **env), capture_output=True, text=True, check=True,
    ).stdout
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    s1 = cpu_seconds(server_pid) if server_pid else 0.0
    line = next(l for l in out.splitlines() if l.startswith("BENCH "))
    r = json.loads(line[6:])
    secs = r["duration_us"] / 1e6
    return Load(
        requests=r["requests"], seconds=secs, rps=r["requests"] / secs,
        p50_ms=r["p50"] / 1000, p90_ms=r["p90"] / 1000, p99_ms=r["p99"] / 1000,
        errors=r["errors"], non2xx=r["non2xx"],
        client_cpu=((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)) / wall,
        server_cpu=(s1 - s0) / wall,
    )


def percentile(values: list[float], q: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def table(title: str, headers: list[str], rows: list[list]) -> str:
    """A markdown table (printed, and collected for docs/benchmarks.md)."""
    def fmt(x):
        if isinstance(x, float):
            return f"{x:.0f}" if abs(x) >= 100 else f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"
        return str(x)
    lines = [f"### {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
