"""Server CPU per request, and where a picture's reading spends it: the figures behind "How a
request is served" in docs/SERVING.md.

    python docs/experiments/serve_cpu.py [--requests 250] [--backend torch onnx] [--model M]
        [--threads 1 2]

1. The reading of a picture in this process, one thread: CPU milliseconds per call of
   `decode_image` and `read_digits` on MNIST test digit 0 (a 7, dark on white as the load test
   sends it) as a 28x28 and a 280x280 PNG, and on a 560x280 drawing-page pad with one digit and
   with two. The best of 7 blocks of calls.
2. The model's batch-1 call in this process: CPU ms per `Predictor.probabilities` of one image
   (all the process's threads counted; calls 0.5 ms apart, as requests come, so that idle
   thread pools show what they cost), PyTorch with one thread and ONNX Runtime with its
   defaults and with threads=1. The best of 5 blocks of 300 calls.
3. `mnistlab serve --model M --threads T` (default: the shipped model; one worker; each T of
   `--threads`, default 1) for each backend, sent `--requests` requests of each payload (JSON pixels, the 28x28 PNG, the
   280x280 PNG) over one keep-alive connection, one after the other; the server process's CPU
   time (user + system, from /proc, in clock ticks) over them, divided by their number. The
   best of 4 rounds.

CPU time, not requests/s: it is what a request costs the server whatever else the machine is
doing, and a busy machine disturbs it far less than it does throughput. Linux only (/proc).
"""

import argparse
import http.client
import io
import os
import socket
import subprocess
import sys
import time
from functools import partial

import numpy as np
import torch
from PIL import Image, ImageDraw

from mnistlab.inference import decode_image, read_digits
from mnistlab.serve.loadtest import payload

MNISTLAB = [sys.executable, "-m", "mnistlab"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def pictures() -> dict[str, bytes]:
    small, _, _ = payload("png")
    large = Image.open(io.BytesIO(small)).resize((280, 280), Image.Resampling.LANCZOS)
    pad = Image.new("L", (560, 280), 255)  # the page's pad, its pen: about a 13th of its height
    ImageDraw.Draw(pad).line([(200, 40), (260, 40), (230, 240)], fill=17, width=22)  # a 7
    two = pad.copy()
    ImageDraw.Draw(two).line([(360, 40), (360, 240)], fill=17, width=22)  # 71
    return {"28x28 PNG digit": small, "280x280 PNG digit": png(large),
            "560x280 pad, one digit": png(pad), "560x280 pad, two digits": png(two)}


def cpu_ms(call, n: int) -> float:
    call()
    best = float("inf")
    for _ in range(7):
        start = time.process_time()
        for _ in range(n):
            call()
        best = min(best, (time.process_time() - start) / n)
    return 1000 * best


def reading_costs() -> None:
    print("| picture | decode_image ms | read_digits ms | digits |")
    print("|---|---|---|---|")
    for name, data in pictures().items():
        image = decode_image(data)
        n = 300 if "28x28" in name else 40
        print(f"| {name} | {cpu_ms(partial(decode_image, data), n):.3f} | "
              f"{cpu_ms(partial(read_digits, image), n):.3f} | {len(read_digits(image))} |")


def send(connection: http.client.HTTPConnection, body: bytes, ctype: str, count: int) -> None:
    """`count` requests, one after the other, each answer read in full."""
    for _ in range(count):
        connection.request("POST", "/api/predict", body=body, headers={"Content-Type": ctype})
        answer = connection.getresponse()
        answer.read()
        if answer.status != 200:
            raise SystemExit(f"{ctype} request: HTTP {answer.status}")


def model_costs(model: str) -> None:
    from mnistlab.inference import Predictor

    image = np.asarray(decode_image(payload("png")[0]))[None]
    print("| predictor | CPU ms per batch-1 call |")
    print("|---|---|")
    for name, options in (("torch, 1 thread", {}), ("onnx, ONNX Runtime's defaults", {"backend": "onnx"}),
                          ("onnx, threads=1", {"backend": "onnx", "threads": 1})):
        predictor = Predictor.load(model, **options)
        for _ in range(50):
            predictor.probabilities(image)
        best = float("inf")
        for _ in range(5):
            start = time.process_time()
            for _ in range(300):
                predictor.probabilities(image)
                time.sleep(0.0005)
            best = min(best, (time.process_time() - start) / 300)
        print(f"| {name} | {1000 * best:.3f} |")


def server_costs(backend: str, threads: int, requests: int, model: str) -> None:
    port = free_port()
    server = subprocess.Popen([*MNISTLAB, "serve", "--port", str(port), "--backend", backend,
                               "--model", model, "--threads", str(threads)],
                              stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.request("GET", "/api/health")
                connection.getresponse().read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not come up") from None
                time.sleep(0.2)
        body_json, _, _ = payload("json")
        shown = pictures()
        cases = [("JSON pixels", body_json, "application/json"),
                 ("28x28 PNG", shown["28x28 PNG digit"], "image/png"),
                 ("280x280 PNG", shown["280x280 PNG digit"], "image/png")]
        for name, body, ctype in cases:
            send(connection, body, ctype, 50)  # warm-up
            rounds = []
            for _ in range(4):
                start = cpu_seconds(server.pid)
                send(connection, body, ctype, requests)
                rounds.append((cpu_seconds(server.pid) - start) / requests)
            print(f"| {backend} | {threads} | {name} | {1000 * min(rounds):.2f} |")
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=250)
    parser.add_argument("--backend", nargs="+", default=["torch", "onnx"])
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, nargs="+", default=[1],
                        help="the server's --threads, each in turn (default: 1)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"cpu: {os.cpu_count()} cores; numpy {np.__version__}, torch {torch.__version__}\n")
    reading_costs()
    print()
    model_costs(args.model)
    print("\n| backend | threads | payload | server CPU ms per request |")
    print("|---|---|---|---|")
    for backend in args.backend:
        for threads in args.threads:
            server_costs(backend, threads, args.requests, args.model)


if __name__ == "__main__":
    main()
