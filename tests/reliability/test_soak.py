"""Soak: 50 concurrent clients submitting and polling against `pipeq dev` for a bounded time
(2 minutes; PIPEQ_SOAK_SECONDS to change). Loopback only. Run with `make soak`."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

import httpx
import pytest

from pipeq.redis_server import free_port
from tests.conftest import ROOT, wait_for
from tests.support import pipelines

pytestmark = [pytest.mark.reliability, pytest.mark.soak]

CLIENTS = 50
WARMUP = 10.0  # seconds of load before the first memory reading
FQ = b"".join(b"@r%d\nACGTACGTAC\n+\nIIIIIIIIII\n" % i for i in range(200))
FA = b">c\n" + b"ACGT" * 200 + b"\n"


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_soak(tmp_path):
    seconds = float(os.environ.get("PIPEQ_SOAK_SECONDS", "120"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPEQ_")}
    env.update(
        PYTHONPATH=str(ROOT), PIPEQ_PORT=str(port), PIPEQ_DATA_DIR=str(tmp_path / "data"),
        PIPEQ_PIPELINE=str(pipelines.write(tmp_path, "fast.sh", pipelines.SLEEPY)), PIPEQ_TEST_SLEEP="0.05",
        PIPEQ_MIN_WORKERS="2", PIPEQ_MAX_WORKERS="4",
    )
    dev_log = open(tmp_path / "dev.log", "wb")
    dev = subprocess.Popen([sys.executable, "-m", "pipeq", "dev"], env=env, cwd=tmp_path, stdout=dev_log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(base), timeout=30, what="pipeq dev")
        api_pid = pipelines.processes_matching("pipeq api", env=str(tmp_path))[0]
        # warm up at full concurrency (thread pool, buffers, connections) before the first
        # memory reading: growth after that is what a leak would show
        asyncio.run(_load(base, WARMUP, {"submit": [], "status": []}, []))
        rss_start = rss_kib(api_pid)
        lat = {"submit": [], "status": []}
        errors: list[str] = []
        samples: list[int] = []
        sampling = threading.Event()

        def sample():
            while not sampling.wait(seconds / 6):
                samples.append(rss_kib(api_pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        asyncio.run(_load(base, seconds, lat, errors))
        sampling.set()
        sampler.join()
        api_alive = api_pid in pipelines.processes_matching("pipeq api", env=str(tmp_path))
        rss_end = rss_kib(api_pid) if api_alive else 0
    finally:
        dev.send_signal(signal.SIGINT)
        dev.wait(timeout=60)

    def pct(xs, p):
        return statistics.quantiles(xs, n=100)[p - 1] * 1000 if len(xs) > 2 else float("nan")

    total = len(lat["submit"]) + len(lat["status"])
    kinds = collections.Counter(e.split(" after")[0] for e in errors)
    print(f"\nsoak: {CLIENTS} clients, {seconds:.0f}s, {total} requests, {total / seconds:.1f} req/s, errors {len(errors)}")
    for kind, xs in lat.items():
        print(f"  {kind:7s} n={len(xs):6d} p50={pct(xs, 50):6.1f} ms p99={pct(xs, 99):6.1f} ms")
    if errors:
        print(f"  errors by kind: {dict(kinds)}; first at {errors[0]}")
    print("  API RSS during the soak (MiB): " + ", ".join(f"{x / 1024:.1f}" for x in samples))
    print(f"  API RSS start {rss_start / 1024:.1f} MiB, end {rss_end / 1024:.1f} MiB ({(rss_end / rss_start - 1) * 100:+.1f}%)")
    if errors:
        tail = (tmp_path / "dev.log").read_text(errors="replace").splitlines()
        print("  pipeq dev log (errors):\n" + "\n".join([ln for ln in tail if "rror" in ln or "Traceback" in ln][-30:]))
    assert api_alive, "the API process died during the soak"
    assert errors == [], errors[:5]
    assert rss_end <= rss_start * 1.2


def _ready(base):
    try:
        return httpx.get(base + "/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def _load(base, seconds, lat, errors):
    deadline = time.monotonic() + seconds
    # keep-alive shorter than uvicorn's 5 s: at equal values a reused connection can be the one
    # the server is closing just then (a client-side ReadError, not a server fault)
    limits = httpx.Limits(max_connections=CLIENTS, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def timed(kind, request, expected):
            """One request: its latency into ``lat[kind]``, or its failure into ``errors``."""
            t = time.perf_counter()
            try:
                r = await request
            except httpx.HTTPError as e:
                errors.append(f"{kind} {type(e).__name__} after {time.perf_counter() - t:.2f}s")
                return None
            lat[kind].append(time.perf_counter() - t)
            if r.status_code != expected:
                errors.append(f"{kind} {r.status_code} {r.text[:100]}")
                return None
            return r

        async def one_client():
            while time.monotonic() < deadline:
                files = [("reads", ("r.fq", FQ)), ("reference", ("r.fa", FA))]
                r = await timed("submit", client.post("/run_pipeline", files=files), 202)
                if r is None:
                    continue
                url = r.json()["status_url"]
                for _ in range(3):
                    await timed("status", client.get(url), 200)

        await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
