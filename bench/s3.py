"""Big uploads with object storage: one FASTQ.gz (1 GB by default) sent three ways, in one run.

1. ``POST /run_pipeline`` (multipart) to an API with ``PIPEQ_STORAGE=s3://…``: the API
   checks the stream as it arrives and passes it on into an S3 multipart upload;
2. the presigned flow: ``POST /uploads``, the parts PUT straight to the store, ``POST
   /uploads/{id}/complete`` and a JSON submission naming the file (checked by a ranged read);
3. a plain boto3 upload of the file to the same store (the limit: no pipeq at all).

The upload through the API runs twice a round: with the content check's streaming inflate
through ISA-L (what pipeq does) and through zlib (what it did before), so the before/after
of the check's CPU per GB comes from one run.

Each is timed from the first byte to the 202 (or to the end of the upload for boto3), with
the API process's CPU seconds and peak memory (VmHWM; a fresh API for each run). The store
is versitygw (POSIX backend) on this machine, as in the tests; the reference is small.
Run with ``make bench-s3``; tables on stdout and in bench/results/s3.md, figures in
bench/results/s3.json.

    python -m bench.s3 [--gb 1] [--runs 3] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.harness import ROOT, cpu_seconds, free_port, stop_group, table, wait_healthy
from pipeq.redis_server import RedisServer
from tests.support.s3server import VersityGW

MB = 1024 * 1024
CONCURRENCY = 4  # parts in flight, for the presigned flow and boto3 alike
_BASES = bytes(b"ACGT"[i % 4] for i in range(256))


def make_fastq_gz(path: Path, size: int) -> Path:
    """A FASTQ.gz of about ``size`` bytes: one ~64 MB gzip member of random 150 bp reads,
    written again and again (a multi-member gzip, which the checks read whole)."""
    if path.exists() and abs(path.stat().st_size - size) < 64 * MB:
        return path
    n = 400_000
    seqs = os.urandom(n * 150).translate(_BASES)
    qual = b"I" * 150
    text = b"".join(b"@r%d\n%s\n+\n%s\n" % (i, seqs[i * 150 : (i + 1) * 150], qual) for i in range(n))
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    member = c.compress(text) + c.flush()
    with open(path, "wb") as f:
        written = 0
        while written < size:
            f.write(member)
            written += len(member)
    return path


def vm_hwm(pid: int) -> int:
    """Peak resident memory of a process, bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


#: ``pipeq api`` whose content checks inflate through zlib instead of ISA-L (the check as it
#: was before), for the before/after in one run
API_ZLIB = ("import sys, zlib; import pipeq.inputs.checks as checks; checks.INFLATER = zlib; "
            "from pipeq.cli import main; sys.exit(main(['api']))")


class Api:
    """``pipeq api`` (one process) on object storage; ``inflate="zlib"`` for the check's
    streaming inflate through zlib."""

    def __init__(self, env: dict[str, str], workdir: Path, inflate: str = "isal"):
        self.port = free_port()
        self.env = dict(env, PIPEQ_PORT=str(self.port))
        self.workdir = workdir
        self.cmd = [sys.executable, "-m", "pipeq", "api"] if inflate == "isal" else [sys.executable, "-c", API_ZLIB]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Api:
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=ROOT, start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=open(self.workdir / "api.log", "ab"))
        wait_healthy(self.url, self.proc, "the API")
        self.cpu0 = cpu_seconds(self.proc.pid)
        self.rss0 = vm_hwm(self.proc.pid)
        return self

    def usage(self) -> tuple[float, int, int]:
        """CPU seconds since start-up, peak RSS at start-up and now."""
        return cpu_seconds(self.proc.pid) - self.cpu0, self.rss0, vm_hwm(self.proc.pid)

    def __exit__(self, *exc) -> None:
        stop_group(self.proc)


def through_api(api: Api, reads: Path, reference: Path) -> None:
    with open(reads, "rb") as r, open(reference, "rb") as ref:
        got = httpx.post(api.url + "/run_pipeline", files=[("reads", (reads.name, r)), ("reference", (reference.name, ref))], timeout=600)
    assert got.status_code == 202, got.text


def presigned(api: Api, reads: Path, reference: Path) -> None:
    refs = [_presigned_upload(api, p) for p in (reads, reference)]
    got = httpx.post(api.url + "/run_pipeline", json={"reads": [refs[0]], "reference": refs[1]}, timeout=60)
    assert got.status_code == 202, got.text


def _presigned_upload(api: Api, path: Path) -> str:
    size = path.stat().st_size
    up = httpx.post(api.url + "/uploads", json={"filename": path.name, "size": size}, timeout=60)
    assert up.status_code == 201, up.text
    up = up.json()

    def put(part: dict) -> dict:
        with open(path, "rb") as f:
            f.seek((part["part_number"] - 1) * up["part_size"])
            data = f.read(up["part_size"])
        r = store.put(part["url"], content=data)
        assert r.status_code == 200, r.text
        return {"part_number": part["part_number"], "etag": r.headers["etag"]}

    # one client, its connections kept, as a browser keeps them
    with httpx.Client(timeout=300, limits=httpx.Limits(max_connections=CONCURRENCY)) as store, ThreadPoolExecutor(CONCURRENCY) as pool:
        parts = list(pool.map(put, up["parts"]))
    done = httpx.post(api.url + f"/uploads/{up['upload_id']}/complete", json={"parts": parts}, timeout=120)
    assert done.status_code == 200, done.text
    return done.json()["reference"]


def plain_boto3(client, bucket: str, reads: Path, part_size: int) -> None:
    from boto3.s3.transfer import TransferConfig

    cfg = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size, max_concurrency=CONCURRENCY)
    client.upload_file(str(reads), bucket, f"plain/{reads.name}", Config=cfg)


def _empty(client, bucket: str) -> None:
    """Delete what a run stored (the disk holds one run's objects at a time)."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0, help="size of the FASTQ.gz (GB)")
    ap.add_argument("--small-gb", type=float, default=0.25, help="a second size for the memory-flat check")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "pipeq-bench-s3")
    args = ap.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    sizes = {"big": int(args.gb * 1e9), "small": int(args.small_gb * 1e9)}
    files = {k: make_fastq_gz(args.data / f"reads-{v // 10**6}MB.fq.gz", v) for k, v in sizes.items()}
    reference = args.data / "ref.fa"
    reference.write_bytes(b">chr1\n" + os.urandom(20000).translate(_BASES) + b"\n")

    with tempfile.TemporaryDirectory(prefix="pipeq-bench-s3-") as tmp:
        tmp = Path(tmp)
        redis = RedisServer(tmp / "redis").start()
        s3 = VersityGW(tmp / "s3").start()
        try:
            s3.make_bucket("bench")
            env = dict(os.environ, **s3.env(), PYTHONPATH=str(ROOT), PIPEQ_REDIS_URL=redis.url, PIPEQ_STORAGE="s3://bench/pipeq",
                       PIPEQ_MAX_UPLOAD_BYTES=str(4 * 10**9), PIPEQ_MAX_TOTAL_UPLOAD_BYTES=str(8 * 10**9))
            os.environ.update(s3.env())
            client = s3.client()
            results: dict[str, list[dict]] = {}

            def measure(name: str, fn, reads: Path):
                os.sync()
                with Api(env, tmp, inflate="zlib" if "zlib" in name else "isal") as api:
                    t0 = time.perf_counter()
                    fn(api, reads)
                    seconds = time.perf_counter() - t0
                    cpu, rss0, rss = api.usage()
                results.setdefault(name, []).append({"seconds": seconds, "api_cpu_s": cpu, "api_rss_start_mb": rss0 / MB,
                                                     "api_rss_peak_mb": rss / MB, "bytes": reads.stat().st_size})
                print(f"{name}: {seconds:.2f} s, API {cpu:.2f} CPU s, peak RSS {rss / MB:.0f} MB (at start {rss0 / MB:.0f})", flush=True)
                _empty(client, "bench")

            big, small = files["big"], files["small"]
            ways = [
                ("plain boto3", lambda api, r: plain_boto3(client, "bench", r, 8 * MB), big),
                ("presigned", lambda api, r: presigned(api, r, reference), big),
                ("POST /run_pipeline", lambda api, r: through_api(api, r, reference), big),
                ("POST /run_pipeline, check through zlib", lambda api, r: through_api(api, r, reference), big),
                ("POST /run_pipeline (small)", lambda api, r: through_api(api, r, reference), small),
            ]
            for _ in range(args.runs):  # round by round: a slower spell of the machine hits every way
                for name, fn, reads in ways:
                    measure(name, fn, reads)
        finally:
            s3.stop()
            redis.stop()

    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in results.items()}
    plain = med["plain boto3"]["seconds"]
    rows = []
    for name, m in med.items():
        rows.append([name, f"{m['bytes'] / 1e9:.2f}", m["seconds"], f"{m['bytes'] / m['seconds'] / MB:.0f}",
                     f"{m['seconds'] / plain:.2f}x" if "small" not in name else "—", m["api_cpu_s"],
                     f"{m['api_cpu_s'] / (m['bytes'] / 1e9):.1f}", m["api_rss_start_mb"], m["api_rss_peak_mb"]])
    md = table(f"Upload of a FASTQ.gz into object storage (medians of {args.runs} runs; versitygw on this machine)",
               ["way", "GB", "seconds", "MiB/s", "vs plain boto3", "API CPU s", "API CPU s per GB", "API RSS at start MB", "API peak RSS MB"], rows)
    cpu = {k: m["api_cpu_s"] / (m["bytes"] / 1e9) for k, m in med.items()}
    md += (f"\nThe check's streaming inflate through ISA-L against zlib, in this run: "
           f"{cpu['POST /run_pipeline, check through zlib'] / cpu['POST /run_pipeline']:.2f}x less API CPU per GB "
           f"({cpu['POST /run_pipeline, check through zlib']:.1f} -> {cpu['POST /run_pipeline']:.1f} CPU s per GB).\n")
    print("\n" + md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "s3.md").write_text(md)
    (args.out / "s3.json").write_text(json.dumps({"runs": results, "medians": med, "concurrency": CONCURRENCY}, indent=1) + "\n")


if __name__ == "__main__":
    main()
