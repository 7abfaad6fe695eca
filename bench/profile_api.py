"""Profile pipeq's API paths with pyinstrument, in one thread.

    python -m bench.profile_api [--requests 300] [--path submit|status|jobs] [--side pipeq|baseline]

The app runs in-process behind httpx's ASGI transport, with Starlette's thread pool replaced
by inline calls, so that pyinstrument (which samples one thread) sees the whole request:
HTTP parsing, multipart, the checks, storage and Redis. A real redis-server is started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

import httpx


async def _inline(func, *args, **kwargs):
    return func(*args, **kwargs)


def patch_threadpool() -> None:
    import fastapi.concurrency
    import fastapi.routing
    import starlette.concurrency

    for mod in (starlette.concurrency, fastapi.concurrency, fastapi.routing):
        mod.run_in_threadpool = _inline
    import fastapi.dependencies.utils as deps_utils

    deps_utils.run_in_threadpool = _inline
    import starlette.datastructures as ds

    async def read(self, size=-1):
        return self.file.read(size)

    async def write(self, data):
        self.file.write(data)

    async def seek(self, offset):
        self.file.seek(offset)

    async def close(self):
        self.file.close()

    ds.UploadFile.read, ds.UploadFile.write, ds.UploadFile.seek, ds.UploadFile.close = read, write, seek, close


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--path", default="submit", choices=["submit", "status", "jobs"])
    ap.add_argument("--side", default="pipeq", choices=["pipeq", "baseline"])
    ap.add_argument("--out", default=None, help="write the text profile here")
    args = ap.parse_args(argv)

    from pyinstrument import Profiler

    from bench.harness import make_upload
    from pipeq.redis_server import RedisServer

    work = Path(tempfile.mkdtemp(prefix="pipeq-prof-"))
    server = RedisServer(work / "redis").start()
    os.environ.update(PIPEQ_REDIS_URL=server.url, PIPEQ_DATA_DIR=str(work / "data"), PIPEQ_QUEUE="prof",
                      BASELINE_REDIS_URL=server.url, BASELINE_DATA_DIR=str(work / "bdata"), BASELINE_QUEUE="bprof")
    patch_threadpool()
    if args.side == "pipeq":
        from pipeq.api.app import create_app

        app = create_app()
    else:
        from bench.baseline.app import app
    _, _, files = make_upload(work)
    multipart = [("reads", (n, files[n])) for n in sorted(files) if ".fq" in n] + [("reference", (n, files[n])) for n in files if n.endswith(".fa")]

    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            ids = []
            for _ in range(50 if args.path != "submit" else 5):  # warm up, and jobs to look at
                r = await c.post("/run_pipeline", files=multipart, data={"sample": "S1"})
                assert r.status_code == 202, r.text
                ids.append(r.json()["job_id"])
            profiler = Profiler(interval=0.0005, async_mode="disabled")
            profiler.start()
            for i in range(args.requests):
                if args.path == "submit":
                    r = await c.post("/run_pipeline", files=multipart, data={"sample": "S1"})
                elif args.path == "status":
                    r = await c.get(f"/job_status/{ids[i % len(ids)]}")
                else:
                    r = await c.get("/jobs")
                assert r.status_code in (200, 202), r.text
            profiler.stop()
            return profiler

    profiler = asyncio.run(run())
    text = profiler.output_text(unicode=True, color=False, show_all=False)
    s = profiler.last_session
    print(f"{args.side} {args.path}: {args.requests} requests, {s.duration / args.requests * 1000:.2f} ms each (one thread, profiled)")
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
