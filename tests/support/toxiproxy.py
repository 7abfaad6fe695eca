"""toxiproxy: a real TCP proxy that injects faults (latency, resets, blackholes) between
Redis and pipeq's clients, for tests/reliability.

    server = Toxiproxy(workdir).start()     # toxiproxy-server on a free loopback port
    proxy = server.proxy("redis", upstream=redis_server.port)
    proxy.url                               # redis://127.0.0.1:<port>/0 — give it to pipeq
    with proxy.toxic("timeout", timeout=0): # a blackhole while the block runs
        ...
    proxy.disable(); proxy.enable()         # refuse connections (and cut those open)
    server.stop()

The binaries are built from the Go module tools/toxiproxy by tools/gobuild.sh (once, cached).
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from pathlib import Path

import httpx

from tests.support.servers import Process, free_port

ROOT = Path(__file__).resolve().parent.parent.parent


def toxiproxy_bin() -> Path:
    """The bin directory of tools/toxiproxy (built on first use, ~40 s)."""
    out = subprocess.run([str(ROOT / "tools" / "gobuild.sh"), "toxiproxy"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


class Proxy:
    """One proxy of the server: ``listen`` on loopback, forwarding to ``upstream``."""

    def __init__(self, api: httpx.Client, name: str, port: int):
        self.api, self.name, self.port = api, name, port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def add(self, kind: str, *, stream: str = "downstream", toxicity: float = 1.0, **attributes) -> str:
        """Add a toxic (``latency``, ``timeout``, ``reset_peer``, ...); return its name."""
        name = f"{kind}-{uuid.uuid4().hex[:6]}"
        r = self.api.post(f"/proxies/{self.name}/toxics",
                          json={"name": name, "type": kind, "stream": stream, "toxicity": toxicity, "attributes": attributes})
        r.raise_for_status()
        return name

    def remove(self, name: str) -> None:
        self.api.delete(f"/proxies/{self.name}/toxics/{name}").raise_for_status()

    @contextlib.contextmanager
    def toxic(self, kind: str, **kwargs):
        name = self.add(kind, **kwargs)
        try:
            yield name
        finally:
            self.remove(name)

    def enable(self, enabled: bool = True) -> None:
        self.api.post(f"/proxies/{self.name}", json={"enabled": enabled}).raise_for_status()

    def disable(self) -> None:
        self.enable(False)

    def delete(self) -> None:
        self.api.delete(f"/proxies/{self.name}").raise_for_status()


class Toxiproxy:
    """``toxiproxy-server`` on a free loopback port, its log in ``workdir``; stopped (and
    waited for) by ``stop``."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = Path(workdir)
        self.proc: Process | None = None
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5)

    def start(self) -> "Toxiproxy":
        exe = toxiproxy_bin() / "server"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = Process("toxiproxy-server", [str(exe), "-host", "127.0.0.1", "-port", str(self.port)],
                            self.workdir / "toxiproxy.log").start()
        self.proc.wait_until(lambda: self.api.get("/version").status_code == 200, "an answer to GET /version", timeout=10)
        return self

    def proxy(self, name: str, *, upstream: int) -> Proxy:
        port = free_port()
        r = self.api.post("/proxies", json={"name": name, "listen": f"127.0.0.1:{port}",
                                            "upstream": f"127.0.0.1:{upstream}", "enabled": True})
        r.raise_for_status()
        return Proxy(self.api, name, port)

    def stop(self) -> None:
        self.api.close()
        if self.proc is not None:
            self.proc.stop(grace=5)
        self.proc = None
