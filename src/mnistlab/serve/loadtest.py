"""A bounded load test of `POST /api/predict` on this machine: requests/s, latency, errors.

Each of `concurrency` clients keeps one HTTP/1.1 connection open and sends the same real image
(an MNIST test digit as a PNG, or as JSON pixels, or a file given) again and again until the time is
up; the first `warmup` seconds are not counted. The client is a few lines over asyncio streams
rather than a general HTTP library, so that on a small machine it takes as little CPU as it can
from the server it measures. Only loopback addresses are accepted as targets.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import ipaddress
import json
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import numpy as np

from mnistlab.errors import MnistlabError
from mnistlab.fileio import read_limited
from mnistlab.inference.images import MAX_IMAGE_BYTES

MAX_SECONDS = 600
MAX_CONCURRENCY = 1024
# a URL as the load test takes it: printable ASCII without spaces, at most 2,000 characters
_URL = re.compile(r"[!-~]{1,2000}")


@dataclass
class LoadResult:
    url: str
    payload: str
    seconds: float
    concurrency: int
    requests: int
    errors: int
    requests_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    error_samples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _mnist_digit(index: int) -> tuple[np.ndarray, int]:
    from mnistlab.data.registry import load_arrays

    mnist = load_arrays("mnist")
    if not 0 <= index < len(mnist.test_images):
        raise MnistlabError(f"--digit must be from 0 to {len(mnist.test_images) - 1}, got {index}")
    return np.asarray(mnist.test_images[index], dtype=np.uint8), int(mnist.test_labels[index])


def mnist_png(index: int = 0) -> tuple[bytes, int]:
    """A real MNIST test digit as a PNG (dark ink on white, as a person's scan would be), and
    its label."""
    from PIL import Image

    pixels, label = _mnist_digit(index)
    buffer = io.BytesIO()
    Image.fromarray(255 - pixels).save(buffer, "PNG")
    return buffer.getvalue(), label


def mnist_pixels_json(index: int = 0) -> tuple[bytes, int]:
    """A real MNIST test digit as the API's JSON pixels (light ink on 0, 0-255), and its label."""
    pixels, label = _mnist_digit(index)
    return json.dumps({"pixels": pixels.tolist()}, separators=(",", ":")).encode(), label


def payload(kind: str = "png", index: int = 0) -> tuple[bytes, str, str]:
    """(body, content type, description) of MNIST test digit `index` as a PNG or JSON pixels."""
    if kind == "json":
        body, label = mnist_pixels_json(index)
        return body, "application/json", f"MNIST test digit {index} (a {label}) as {len(body):,} bytes of JSON pixels"
    if kind != "png":
        raise MnistlabError(f"unknown payload {kind!r}: expected png or json")
    body, label = mnist_png(index)
    return body, "image/png", f"MNIST test digit {index} (a {label}) as a {len(body)}-byte PNG"


def _target(url: str) -> tuple[str, int, str]:
    """The host, port and path of `url`, a plain http:// URL of this machine, checked: a bad
    one is one MnistlabError."""
    if not _URL.fullmatch(url):  # the path goes into the request line as it is
        raise MnistlabError(f"{url[:80]!r}: not a URL (expected http://HOST:PORT, printable "
                            "characters without spaces)")
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http":
        raise MnistlabError(f"{url}: only plain http:// URLs are load-tested")
    try:
        port = parts.port
    except ValueError:  # not a number, or outside 0-65535
        port = 0
    if port == 0 or not parts.netloc.rpartition("@")[2].strip("[]:"):
        raise MnistlabError(f"{url}: expected http://HOST:PORT with a port from 1 to 65535")
    host, port = parts.hostname or "127.0.0.1", port or 80
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except (socket.gaierror, UnicodeError) as e:
        raise MnistlabError(f"{url}: cannot resolve {host}: {getattr(e, 'strerror', None) or e}") from None
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise MnistlabError(f"{url}: the load test only targets this machine (127.0.0.1, ::1, "
                            "localhost)")
    path = parts.path.rstrip("/")
    if not path.endswith("/api/predict"):
        path += "/api/predict"
    return host, port, path


async def _client(host: str, port: int, request: bytes, warmup_end: float, end: float,
                  latencies: list[float], errors: list[str]) -> None:
    reader = writer = None
    while time.perf_counter() < end:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            sent = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length, close = None, False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if not status_line or length is None:
                raise ConnectionError("the server closed the connection or sent no Content-Length")
            body = await reader.readexactly(length)
            done = time.perf_counter()
            status = int(status_line.split()[1])
            if sent >= warmup_end and done <= end:
                if status == 200:
                    latencies.append(done - sent)
                else:
                    errors.append(f"HTTP {status}: "
                                  + " ".join(body[:200].decode("utf-8", "replace").split()))
            if close:
                writer.close()
                reader = writer = None
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
            if time.perf_counter() >= warmup_end:
                errors.append(f"{type(e).__name__}: {e}")
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


async def _run(host: str, port: int, request: bytes, seconds: float, warmup: float,
               concurrency: int) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    warmup_end, end = start + warmup, start + warmup + seconds
    clients = [_client(host, port, request, warmup_end, end, latencies, errors)
               for _ in range(concurrency)]
    # every client stops by itself at `end`; the timeout is a backstop for a server that hangs
    try:
        await asyncio.wait_for(asyncio.gather(*clients), timeout=warmup + seconds + 30)
    except TimeoutError:
        errors.append("timeout: clients still waiting 30 s after the end")
    return latencies, errors, seconds


def loadtest(url: str, *, seconds: float = 30, concurrency: int = 32, warmup: float = 2,
             body: bytes | None = None, content_type: str | None = None,
             payload_name: str = "") -> LoadResult:
    """Load `url`'s /api/predict for `warmup + seconds`, counting only the last `seconds`.

    `body` is sent as it is with `content_type` (default: MNIST test digit 0 as a PNG; for a
    body given without a type, image/png or image/jpeg from its first bytes)."""
    if not 0 < seconds <= MAX_SECONDS:
        raise MnistlabError(f"--seconds must be more than 0 and at most {MAX_SECONDS}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise MnistlabError(f"--concurrency must be from 1 to {MAX_CONCURRENCY}")
    if not 0 <= warmup <= 60:
        raise MnistlabError("--warmup must be from 0 to 60 seconds")
    host, port, path = _target(url)
    if body is None:
        body, content_type, payload_name = payload("png", 0)
    if content_type is None:
        content_type = "image/jpeg" if body[:3] == b"\xff\xd8\xff" else "image/png"
    host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = (f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\nContent-Type: {content_type}\r\n"
               f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n").encode() + body
    _check_answers(host, port, path, body, content_type, f"http://{host_header}{path}")
    latencies, errors, seconds = asyncio.run(_run(host, port, request, seconds, warmup, concurrency))
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return LoadResult(
        url=f"http://{host_header}{path}", payload=payload_name or f"{len(body):,} bytes of {content_type}",
        seconds=seconds, concurrency=concurrency, requests=len(latencies), errors=len(errors),
        requests_per_second=len(latencies) / seconds,
        p50_ms=float(np.percentile(ms, 50)), p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)), max_ms=float(ms.max()),
        error_samples=sorted(set(errors))[:5],
    )


def _check_answers(host: str, port: int, path: str, body: bytes, content_type: str,
                   url: str) -> None:
    """One request first: a server that is not there, or that refuses the payload, is one clear
    error, not a load test that counts thousands of failures."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("POST", path, body, {"Content-Type": content_type})
        response = connection.getresponse()
        status, answer = response.status, response.read(4096)
    except (OSError, http.client.HTTPException) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise MnistlabError(f"cannot load-test {url}: {reason} (is `mnistlab serve` running "
                            "there?)") from None
    finally:
        connection.close()
    if status != 200:
        try:
            detail = str(json.loads(answer)["detail"])
        except (ValueError, KeyError, TypeError):
            detail = answer[:200].decode("utf-8", "replace")
        detail = " ".join(detail.split())  # one line, whatever page the server sent
        raise MnistlabError(f"{url} answered {status} to the payload ({detail}): nothing to "
                            "measure")


def format_result(r: LoadResult) -> str:
    lines = [
        f"load test of {r.url}: {r.concurrency} connections, {r.seconds:g} s measured",
        f"payload: {r.payload}",
        f"{r.requests:,} requests answered 200 in {r.seconds:g} s: {r.requests_per_second:,.0f} requests/s",
        f"latency: p50 {r.p50_ms:.1f} ms  p90 {r.p90_ms:.1f} ms  p99 {r.p99_ms:.1f} ms  "
        f"max {r.max_ms:.1f} ms",
        f"errors: {r.errors:,}",
    ]
    lines += [f"  e.g. {e}" for e in r.error_samples]
    return "\n".join(lines)


def load_image_file(path: str) -> bytes:
    """The bytes of the image file to send: at most what the server accepts of one image, from
    a regular file (a FIFO or a device is refused)."""
    data = read_limited(path, MAX_IMAGE_BYTES, "image")
    if not data:
        raise MnistlabError(f"{path}: the file is empty")
    return data


def result_json(r: LoadResult) -> str:
    return json.dumps(r.to_dict(), indent=2) + "\n"
