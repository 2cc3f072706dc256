"""A soak of `mnistlab serve`: minutes of high concurrency on 127.0.0.1, counting errors and
watching the server's memory.

    python docs/experiments/serve_soak.py [--seconds 120] [--concurrency 64] [--workers 1]
        [--backend torch]

Starts the server on a free port, then two `mnistlab loadtest` clients at once for `--seconds`
each (after their 2 s warm-up): one posts a PNG of an MNIST test digit, the other the JSON
pixels of another, each over `--concurrency` keep-alive connections. Meanwhile the resident
memory (VmRSS from /proc) of the server and of its worker processes is sampled every 2 s. Prints
the memory over time, then requests, errors, latency and the memory at the start (before any
load), its peak and at the end, and whether it was steady: the last half of the soak grew by
less than 5% over its first sample. Exits 1 on any error or an unsteady memory. The load
generators run on the same machine and take their share of the CPU.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import MNISTLAB, free_port, wait_until_up  # noqa: E402

SAMPLE_EVERY = 2.0


def tree(pid: int) -> list[int]:
    """`pid` and every process below it (uvicorn's workers)."""
    pids, i = [pid], 0
    while i < len(pids):
        for task in Path(f"/proc/{pids[i]}/task").glob("*/children"):
            try:
                pids += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
        i += 1
    return pids


def rss_mib(pid: int) -> float:
    """The resident memory of `pid` and its children, in MiB."""
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])  # kB
        except OSError:
            pass
    return total / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--concurrency", type=int, default=64, help="connections per client")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([*MNISTLAB, "serve", "--port", str(port), "--workers",
                               str(args.workers), "--backend", args.backend],
                              stdout=subprocess.DEVNULL)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    try:
        wait_until_up(url, server)
        time.sleep(1)
        start = time.monotonic()
        samples.append((0.0, rss_mib(server.pid)))

        def sample() -> None:
            while not stop.wait(SAMPLE_EVERY):
                samples.append((time.monotonic() - start, rss_mib(server.pid)))

        threading.Thread(target=sample, daemon=True).start()
        with tempfile.TemporaryDirectory() as tmp:
            clients = []
            for payload, digit in (("png", 0), ("json", 1)):
                out = Path(tmp) / f"{payload}.json"
                clients.append((out, subprocess.Popen(
                    [*MNISTLAB, "loadtest", url, "--seconds", str(args.seconds), "--concurrency",
                     str(args.concurrency), "--payload", payload, "--digit", str(digit), "--json",
                     str(out)], stdout=subprocess.DEVNULL)))
            for _, client in clients:
                client.wait(timeout=args.seconds + 180)
            results = [json.loads(out.read_text()) for out, _ in clients]
        time.sleep(SAMPLE_EVERY)  # one sample after the load
        stop.set()
        with urllib.request.urlopen(url + "/api/health", timeout=10) as r:
            health = json.loads(r.read())["status"]
    finally:
        stop.set()
        server.terminate()
        server.wait(timeout=30)

    print(f"mnistlab serve --workers {args.workers} --backend {args.backend} on 127.0.0.1; "
          f"2 clients x {args.concurrency} connections for {args.seconds:g} s (+2 s warm-up)")
    print("| time s | server RSS MiB |\n|---|---|")
    step = max(1, len(samples) // 13)
    for t, mib in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        print(f"| {t:.0f} | {mib:.1f} |")
    requests = sum(r["requests"] for r in results)
    errors = sum(r["errors"] for r in results)
    for r in results:
        print(f"{r['payload']}: {r['requests']:,} answered 200 ({r['requests_per_second']:,.0f}/s), "
              f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.0f} ms, "
              f"errors {r['errors']}" + "".join(f"\n  e.g. {e}" for e in r["error_samples"]))
    mibs = [m for _, m in samples]
    half = [m for t, m in samples if t >= args.seconds / 2]
    growth = (max(half) - half[0]) / half[0] if half else 0.0
    steady = growth < 0.05
    print(f"requests: {requests:,} in {args.seconds:g} s ({requests / args.seconds:,.0f}/s); "
          f"errors: {errors}")
    print(f"server memory (RSS): start {mibs[0]:.1f} MiB, peak {max(mibs):.1f} MiB, "
          f"end {mibs[-1]:.1f} MiB; last half {min(half):.1f}-{max(half):.1f} MiB, "
          f"growth {growth:+.1%}: {'steady' if steady else 'NOT steady'}")
    print(f"health after the soak: {health}")
    sys.exit(0 if errors == 0 and steady and health == "ok" else 1)


if __name__ == "__main__":
    main()
