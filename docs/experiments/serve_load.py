"""The load test behind docs/SERVING.md: `mnistlab serve` with 1 and 2 workers, loaded by
`mnistlab loadtest` with a PNG of a real MNIST digit and with the same digit as JSON pixels.

    python docs/experiments/serve_load.py [--seconds 30] [--concurrency 32] [--workers 1 2]
        [--backends torch onnx]

Each server runs on 127.0.0.1 on a free port, is loaded for `--seconds` (after a 2 s warm-up),
and is stopped; the load generator runs on the same machine and so takes its share of the CPU.
Prints a Markdown table; the whole run takes about (seconds + 10) x 2 x len(workers) seconds.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

MNISTLAB = [sys.executable, "-m", "mnistlab"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not come up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backends", nargs="+", choices=["torch", "onnx"], default=["torch"])
    args = parser.parse_args()
    print(f"cpu: {os.cpu_count()} cores; {args.concurrency} connections, {args.seconds:g} s each")
    print("| backend | workers | payload | requests/s | p50 ms | p90 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for backend, workers in [(b, w) for b in args.backends for w in args.workers]:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            server = subprocess.Popen([*MNISTLAB, "serve", "--port", str(port), "--workers",
                                       str(workers), "--backend", backend],
                                      stdout=subprocess.DEVNULL)
            try:
                wait_until_up(url, server)
                for payload in ("png", "json"):
                    out = Path(tmp) / f"{backend}-{workers}-{payload}.json"
                    subprocess.run([*MNISTLAB, "loadtest", url, "--seconds", str(args.seconds),
                                    "--concurrency", str(args.concurrency), "--payload", payload,
                                    "--json", str(out)], check=False, stdout=subprocess.DEVNULL,
                                   timeout=args.seconds + 120)
                    r = json.loads(out.read_text())
                    print(f"| {backend} | {workers} | {payload} | {r['requests_per_second']:,.0f} | "
                          f"{r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | "
                          f"{r['errors']} |", flush=True)
            finally:
                server.terminate()
                server.wait(timeout=30)


if __name__ == "__main__":
    main()
