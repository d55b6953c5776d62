"""What a sandboxed service's own network namespace costs per request (not a test; needs root).

    python -m tests.bench.sandbox_net [--requests 300]

The same tiny HTTP service (services.common.http) runs unsandboxed and in the sandbox, where the
grader's calls go through both relays (grader/sandbox/relay.py: host TCP -> Unix -> namespace TCP).
Prints the median and p90 of GET /healthz, on one kept-alive connection and with a new connection
per request, and the difference (what each request pays for the namespace).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from grader.lab import HttpSpec, ServiceSpec
from grader.launch import Service
from grader.sandbox import Sandbox

SPEC = ServiceSpec("order_api", ["python", "-m", "order_api"], http=HttpSpec())
APP = "from services.common.http import json_app, serve\nserve(json_app('bench'))\n"


def timings(url: str, n: int, keep_alive: bool) -> list[float]:
    out = []
    with httpx.Client(timeout=10) as client:
        client.get(url)
        for _ in range(n):
            t0 = time.perf_counter()
            if keep_alive:
                client.get(url)
            else:
                httpx.get(url, timeout=10)
            out.append((time.perf_counter() - t0) * 1000)
    return out


def summary(ms: list[float]) -> str:
    return f"median {statistics.median(ms):.2f} ms, p90 {statistics.quantiles(ms, n=10)[-1]:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    n = parser.parse_args().requests
    with tempfile.TemporaryDirectory() as tmp:
        sub = Path(tmp) / "sub"
        (sub / "order_api").mkdir(parents=True)
        (sub / "order_api" / "__main__.py").write_text(APP)
        results = {}
        for mode in ("plain", "sandboxed"):
            (Path(tmp) / mode).mkdir()
            box = Sandbox(sub).open() if mode == "sandboxed" else None
            try:
                service = Service(SPEC, sub, {}, Path(tmp) / mode, sandbox=box).start()
                service.wait_healthy(60)
                url = service.base_url + "/healthz"
                results[mode] = {k: timings(url, n, k == "keep-alive") for k in ("keep-alive", "new connection")}
                service.stop()
            finally:
                if box:
                    box.close()
        for kind in ("keep-alive", "new connection"):
            plain, boxed = results["plain"][kind], results["sandboxed"][kind]
            print(f"{kind:15s} plain: {summary(plain)}; sandboxed: {summary(boxed)}; "
                  f"added (median) {statistics.median(boxed) - statistics.median(plain):.2f} ms")


if __name__ == "__main__":
    main()
