"""Figure 1 of issue 22: what verifying a bearer JWT costs a status read, in one run.

Three API processes (``pipeq api``) on one Redis, one job each: identity off (mode none),
the admin token (mode token: a constant-time compare), and OIDC (mode token+oidc: a JWT of a
local issuer, RS256, verified against its JWKS, which the issuer serves on loopback and
counts). ``GET /job_status/{id}`` is read ``--requests`` times per mode over one keep-alive
connection, the modes interleaved in rounds so that drift on a shared machine hits all of
them alike. Printed: p50 and p95 per mode, the JWT's added p50 against the token's, and the
JWKS fetches during the OIDC requests (target: added p50 <= 1 ms, fetches <= 1).

    python -m bench.auth [--requests 1000] [--rounds 10] [--out bench/results]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.harness import ROOT, free_port, percentile, stop_group, table, wait_healthy
from pipeq import queue
from pipeq.auth.principal import oidc_id
from pipeq.redis_server import RedisServer
from tests.support.oidc_issuer import LocalIssuer

TOKEN = "bench-admin-token-0123456789"


def start_api(name: str, redis_url: str, workdir: Path, **env) -> tuple[subprocess.Popen, str]:
    port = free_port()
    full = dict(os.environ, PYTHONPATH=str(ROOT), PIPEQ_REDIS_URL=redis_url, PIPEQ_PORT=str(port),
                PIPEQ_DATA_DIR=str(workdir / "data"), **env)
    log = open(workdir / f"{name}-api.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "pipeq", "api"], env=full, cwd=ROOT, start_new_session=True,
                            stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, f"{name} API")
    return proc, url


def in_process(issuer: LocalIssuer, n: int) -> list[list]:
    """The dependency alone, in this process: a token seen for the first time (signature,
    claims) and one seen before (remembered until its exp), in microseconds."""
    import asyncio

    from pipeq.auth.dependency import Authenticator
    from pipeq.auth.keys import KeySet
    from pipeq.settings import Settings

    keys = KeySet(issuer.url)
    keys.refresh()
    auth = Authenticator(Settings(oidc_issuer=issuer.url, oidc_audience=issuer.audience, api_token=TOKEN), keys)
    fresh = [issuer.sign(sub=f"u{i}", exp=int(time.time()) + 3600) for i in range(n)]
    loop = asyncio.new_event_loop()
    rows = []
    for what, credentials in (("admin token", [TOKEN] * n), ("JWT, first time (RS256 verify)", fresh),
                              ("JWT, seen before", [fresh[0]] * n)):
        times = []
        for c in credentials:
            t = time.perf_counter()
            loop.run_until_complete(auth.principal(c))
            times.append((time.perf_counter() - t) * 1e6)
        rows.append([what, n, percentile(times, 0.5), percentile(times, 0.95)])
    loop.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000, help="status reads per mode")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds the reads are split into")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="pipeq-bench-auth-"))
    redis = RedisServer(workdir / "redis").start()
    issuer = LocalIssuer().start()
    procs = []
    try:
        conn = queue.connect(redis.url)
        sub = "bench-user"
        owners = {"none": "anonymous", "token": "admin", "oidc": oidc_id(issuer.url, sub)}
        jobs = {}
        for mode, owner in owners.items():
            jobs[mode] = f"{abs(hash(mode)) % 16**32:032x}"
            queue.enqueue_run(conn, "pipeline_tasks", jobs[mode], {"reads": ["r.fq"], "reference": "r.fa"},
                              meta={"owner": owner, "attempt": 0}, retries=0, ttl=3600)
        oidc_env = dict(PIPEQ_API_TOKEN=TOKEN, PIPEQ_OIDC_ISSUER=issuer.url, PIPEQ_OIDC_AUDIENCE=issuer.audience)
        servers = {}
        for mode, env in (("none", {}), ("token", {"PIPEQ_API_TOKEN": TOKEN}), ("oidc", oidc_env)):
            proc, url = start_api(mode, redis.url, workdir, **env)
            procs.append(proc)
            servers[mode] = url
        jwt = issuer.sign(sub=sub, exp=int(time.time()) + 3600)
        headers = {"none": {}, "token": {"Authorization": f"Bearer {TOKEN}"}, "oidc": {"Authorization": f"Bearer {jwt}"}}
        clients = {m: httpx.Client(base_url=servers[m], headers=headers[m], timeout=10) for m in servers}
        for m, c in clients.items():  # warm up: connections, imports, the first verification
            for _ in range(50):
                assert c.get(f"/job_status/{jobs[m]}").status_code == 200, (m, c.get(f"/job_status/{jobs[m]}").text)
        fetches_before = issuer.jwks_fetches
        times: dict[str, list[float]] = {m: [] for m in clients}
        per_round = max(1, args.requests // args.rounds)
        for _ in range(args.rounds):
            for m, c in clients.items():
                path = f"/job_status/{jobs[m]}"
                for _ in range(per_round):
                    t = time.perf_counter()
                    r = c.get(path)
                    times[m].append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 200
        fetches = issuer.jwks_fetches - fetches_before
        fetched_in_all = issuer.jwks_fetches
        p50 = {m: percentile(v, 0.5) for m, v in times.items()}
        rows = [[m, len(v), p50[m], percentile(v, 0.95)] for m, v in times.items()]
        added = p50["oidc"] - p50["token"]
        load = os.getloadavg()[0]
        out = table(f"GET /job_status by identity mode (ms, one keep-alive connection; load average {load:.1f} on {os.cpu_count()} CPUs)",
                    ["mode", "requests", "p50", "p95"], rows)
        out += "\n" + table("The identity dependency alone, in process (µs)", ["credential", "calls", "p50", "p95"],
                            in_process(issuer, args.requests))
        out += (f"\nJWT verification adds {added:.3f} ms to the p50 (target <= 1 ms): "
                f"{'met' if added <= 1 else 'NOT met'}; JWKS fetched {fetches} time(s) over "
                f"{len(times['oidc'])} OIDC requests (target <= 1), {fetched_in_all} in all by the API (its startup's included)\n")
        print(out)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "auth.md").write_text(out)
        return 0 if added <= 1 and fetches <= 1 else 1
    finally:
        for p in procs:
            stop_group(p)
        issuer.stop()
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
