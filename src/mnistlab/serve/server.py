"""`mnistlab serve`: load the model, claim the port, run uvicorn, within bounds.

What a client can make the server do is bounded here, below the application: the size and the
time of a request's head (its request line and headers), and the number of open connections
(`BoundedHttpProtocol`); and how long a shutdown waits for requests in progress. Request
bodies are bounded in size and time by the application (`app.read_body`), and each inference
in time by the batcher (`batcher.MODEL_TIMEOUT`).
"""

from __future__ import annotations

import errno
import gc
import http
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mnistlab.errors import MnistlabError
from mnistlab.inference.reading import DEFAULT_TOP_K
from mnistlab.serve.errors import error_response, error_shape

# A request's line and headers, in bytes. Browsers send 1-2 KiB, but cookies are shared by
# every port of a host, so a developer's localhost can carry many KiB of other apps' cookies:
# 64 KiB is room for that and bounds a connection's head (1,024 connections: 64 MiB in all).
# nginx allows 4 x 8 KiB by default, Node.js 16 KiB.
MAX_HEAD_BYTES = 64 * 1024
# Header fields in one request: each costs a list entry and two objects besides its bytes, so
# 64 KiB of tiny headers would cost ten times more than their size. Apache allows 100.
MAX_HEADERS = 100
# Seconds from a connection's start (or a request's first byte, on a kept-alive connection)
# until its head is complete. A client sends its head in one packet, in milliseconds; 10 s is
# room for a slow link, and a slow-header attack holds a connection no longer than this.
HEAD_TIMEOUT = 10.0
# Open connections per server process; one past it is answered 503 and closed at once. The load
# test opens up to 1,024 (`loadtest.MAX_CONCURRENCY`); at most 64 KiB of head each, as above.
MAX_CONNECTIONS = 1024
# Seconds an idle kept-alive connection stays open (uvicorn's default, stated): the page sends
# a request at most every 120 ms while one draws, and an idle connection holds a place above.
KEEP_ALIVE = 5
# Seconds a shutdown (Ctrl-C, SIGTERM) waits for requests in progress before cancelling them:
# a request takes milliseconds, and one waiting on a stuck model would otherwise hold the
# shutdown for up to batcher.MODEL_TIMEOUT; the model's thread then gets batcher.CLOSE_WAIT.
GRACEFUL_SHUTDOWN = 1


def _raw_answer(status: int, code: str, detail: str) -> bytes:
    """A whole HTTP response in our JSON error shape, closing the connection: for what the
    protocol refuses before any request reaches the application."""
    body = error_shape(code, detail)
    head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode("ascii") + body


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (the one uvicorn picks when httptools is installed, as it
    is here), with the bounds it lacks: with httptools, uvicorn bounds neither a request head's
    size nor its time (llhttp itself has no limit: a 50 MB header line was read whole), and its
    `limit_concurrency` answers 503 to requests but never closes a connection.

    - a head of more than `max_head_bytes` or `max_headers` fields: 431 and the connection
      closed, as soon as the head passes the limit (or, for a head that arrives whole in one
      read, once it is parsed);
    - a head not complete `head_timeout` seconds after the connection opened, or after the
      first byte of a later request on it: 408 and closed (closed silently if nothing came);
    - a connection past `max_connections` open in this process: 503 and closed at once.

    The limits are class attributes, so that a test can subclass with shorter ones.
    """

    max_head_bytes = MAX_HEAD_BYTES
    max_headers = MAX_HEADERS
    head_timeout = HEAD_TIMEOUT
    max_connections = MAX_CONNECTIONS

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._head_bytes = 0  # bytes received of the head in progress (an upper bound)
        self._head_timer: Any = None  # set while a head is expected or in progress
        self._too_many_headers = False
        if len(self.connections) > self.max_connections:  # this one included
            self._refuse(503, "too_many_connections", f"the server has {self.max_connections:,} "
                         "connections open: try again shortly")
            return
        self._start_head_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        head_was_open = self._head_timer is not None
        super().data_received(data)  # the parser's callbacks below run in here
        if self._head_timer is None or self.transport.is_closing():
            return  # no head in progress: none begun, or it was completed by this data
        # a head began in this data: its bytes are at most all of it (a pipelining client's
        # previous body may share the data, counted too: the bound errs on the strict side)
        self._head_bytes = (self._head_bytes if head_was_open else 0) + len(data)
        if self._head_bytes > self.max_head_bytes or self._too_many_headers:
            self._refuse(431, "headers_too_large", self._head_limits())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # a later request on a kept-alive connection
            self._start_head_clock()

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= self.max_headers:
            self._too_many_headers = True  # not kept; answered 431 as soon as this is seen
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_head_clock()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if self._too_many_headers or size > self.max_head_bytes:
            # uvicorn runs `self.app` for the request it is about to start: this one answers
            # 431 and closes, through uvicorn's own request cycle (the body is never read);
            # the URL is not parsed (httptools refuses one over 65,535 bytes with a plain 400)
            self.app, self.url = self._answer_head_too_large, b"/"
        super().on_headers_complete()

    async def _answer_head_too_large(self, scope: Any, receive: Any, send: Any) -> None:
        """An ASGI app: 431 for a whole head over the limits, and the connection closed."""
        response = error_response(431, "headers_too_large", self._head_limits(),
                                  headers={"connection": "close"})
        await response(scope, receive, send)

    def send_400_response(self, msg: str) -> None:
        """What httptools cannot parse (a Content-Length that is no number, a bad chunk, an
        unknown method, ...): 400 in our JSON shape, where uvicorn answers plain text; closed."""
        self._refuse(400, "bad_request", "the request is not well-formed HTTP/1.1 (its request "
                     "line, a header or the body's framing)")

    def _head_limits(self) -> str:
        return (f"the request line and headers must be at most {self.max_head_bytes:,} bytes "
                f"in at most {self.max_headers} fields")

    def _start_head_clock(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _stop_head_clock(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.flow.read_paused:  # pipelined requests wait unread: the delay is ours
            self._start_head_clock()
        elif self._head_bytes:
            self._refuse(408, "request_timeout", "the request line and headers did not arrive "
                         f"within {self.head_timeout:g} s")
        else:  # an idle connection (a browser opens spares): closed as keep-alive closes them
            self.transport.close()

    def _refuse(self, status: int, code: str, detail: str) -> None:
        """Answer `status` outside any request, and close the connection."""
        if self.transport.is_closing():
            return
        # never inside another answer (a request whose body broke off is answered here: the
        # application then sees the client gone)
        if self.cycle is None or not self.cycle.response_started or self.cycle.response_complete:
            self.transport.write(_raw_answer(status, code, detail))
        self.transport.close()


def uvicorn_options(log_level: str = "warning",
                    protocol: type[BoundedHttpProtocol] = BoundedHttpProtocol) -> dict[str, Any]:
    """uvicorn's Config options for every server of ours (`serve`, its workers, and
    `running_server`). uvicorn's `limit_concurrency` is left unset: its check counts every open
    connection, so a flood of slow heads would turn requests on established connections into
    503s; the protocol bounds connections instead, and requests come one at a time on each.
    `backlog` stays uvicorn's (2,048, capped by the kernel): connections waiting to be accepted
    cost the server nothing, and once accepted they count towards MAX_CONNECTIONS."""
    return dict(http=protocol, ws="none",  # no WebSocket route: an upgrade is a plain request
                timeout_keep_alive=KEEP_ALIVE, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
                log_level=log_level, access_log=False)


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), or one clear MnistlabError saying why it cannot be."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise MnistlabError(f"cannot listen on {host}: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise MnistlabError(f"port {port} on {host} is already in use: stop what is using it, "
                                "or choose another port with --port") from None
        if e.errno == errno.EACCES:
            raise MnistlabError(f"not allowed to listen on port {port} (ports below 1024 need "
                                "privileges): choose another with --port") from None
        raise MnistlabError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def freeze_loaded_objects() -> None:
    """Exempt everything alive now (the model, the libraries: some 300,000 objects) from
    Python's cycle collector, after one last collection. A full collection over them takes a
    quarter of a second here, paid by the event loop now and then while serving, and several
    times over when Ctrl-C ends the process (1.3-1.5 s from Ctrl-C to exit after loading the
    shipped model, 0.3 s with this). They live as long as the process; reference counting
    still frees whatever is released."""
    gc.collect()
    gc.freeze()


def set_threads(threads: int) -> None:
    """PyTorch's threads for the model in this process (the onnx backend is given the same
    number when the predictor is loaded). One is best for serving on a small machine: the
    batches are small, and the other cores parse, decode and answer requests."""
    import torch

    torch.set_num_threads(threads)


# Workers, and each worker's model threads, per CPU at most: more only wait for a core, and a
# mistyped count (100000 workers) would start processes until the machine runs out of memory.
MOST_PER_CPU = 4


def check_processes(workers: int, threads: int) -> None:
    """One clear error for a worker or thread count this machine cannot use."""
    most = MOST_PER_CPU * (os.cpu_count() or 1)
    for name, value in (("workers", workers), ("threads", threads)):
        if not 1 <= value <= most:
            raise MnistlabError(f"{name} must be from 1 to {most} ({MOST_PER_CPU} per CPU of this "
                                f"machine), got {value:,}")


def served_top_k(top_k: int | None, predictors: dict[str, Any]) -> int:
    """`top_k`, or by default 3 (fewer where the models read fewer classes). It is capped at
    each model's classes; more than any served model reads is a mistake, not a cap."""
    most = max(len(p.info["class_names"]) for p in predictors.values())
    if top_k is None:
        return min(DEFAULT_TOP_K, most)
    if not 1 <= top_k <= most:
        raise MnistlabError(f"top_k must be from 1 to {most} (the classes the "
                            f"model{'s' if len(predictors) > 1 else ''} served read), got {top_k:,}")
    return top_k


def load_models(targets: list[str], backend: str, threads: int) -> dict[str, Any]:
    """A predictor for each target (run folder, file, shipped name), by the name `?model=`
    picks it by (`served.model_name`), in order: the first is the default."""
    from mnistlab.inference.predictor import Predictor
    from mnistlab.serve.served import model_name, unique_names

    names = unique_names([model_name(str(t)) for t in targets])
    return {name: Predictor.load(str(target), backend=backend, threads=threads)
            for name, target in zip(names, targets)}


def serve(models: str | list[str] = "default", *, host: str = "127.0.0.1", port: int = 8000,
          backend: str = "onnx", workers: int = 1, threads: int = 1, top_k: int | None = None,
          collect: str | os.PathLike | None = None, log_level: str = "warning") -> None:
    """Serve the page and the API over one model or several (the first is the default) until
    Ctrl-C (or SIGTERM); with `collect`, store the page's corrections in that folder
    (`collect.py`). ONNX Runtime computes predictions by default: about twice PyTorch's
    throughput on one worker (docs/SERVING.md)."""
    import uvicorn

    from mnistlab.serve import app as app_module
    from mnistlab.serve.collect import Collector

    targets = [models] if isinstance(models, (str, os.PathLike)) else list(models)
    check_processes(workers, threads)
    set_threads(threads)
    # load once here, also with several workers: a bad checkpoint is one line, before any worker
    predictors = load_models(targets, backend, threads)
    top_k = served_top_k(top_k, predictors)
    first = next(iter(predictors.values()))
    if collect is not None:  # the folder and the class names, checked here for every worker
        Collector(collect, first.info["class_names"])
    sock = listen_socket(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    listed = ", ".join(f"{name} ({p.info.get('model') or '?'}, {p.info['backend']})"
                       for name, p in predictors.items())
    plural = "s" if len(predictors) > 1 else ""
    common = uvicorn_options(log_level)
    config = None
    if workers == 1:
        config = uvicorn.Config(app_module.create_app(predictors, top_k=top_k, collect=collect),
                                **common)
    else:
        # several processes: each worker builds its own app (and model) from the variables
        # below, and uvicorn binds the port again for them; the check above has already given
        # any clear error
        sock.close()
        del predictors, first  # loaded for that check only: not held while the workers serve
    # before the line that says it serves: a Ctrl-C seen inside this collection's callbacks
    # would be lost, and the server would go on
    freeze_loaded_objects()
    print(f"mnistlab: serving model{plural} {listed} at {url}  (API docs: {url}docs; "
          f"{workers} worker{'s' if workers > 1 else ''}; Ctrl-C stops)", flush=True)
    if collect is not None:
        print(f"mnistlab: storing the page's corrections in {Path(collect) / 'train'}/<class>/",
              flush=True)
    if config is not None:
        uvicorn.Server(config).run(sockets=[sock])
        return
    os.environ[app_module.ENV_MODEL] = json.dumps([os.fspath(t) for t in targets])
    os.environ[app_module.ENV_BACKEND] = backend
    os.environ[app_module.ENV_TOP_K] = str(top_k)
    os.environ[app_module.ENV_THREADS] = str(threads)
    os.environ[app_module.ENV_COLLECT] = os.fspath(collect) if collect is not None else ""
    uvicorn.run("mnistlab.serve.app:app_from_environment", factory=True, host=host, port=port,
                workers=workers, **common)


@contextmanager
def running_server(app: Any, host: str = "127.0.0.1", port: int = 0, timeout: float = 30,
                   protocol: type[BoundedHttpProtocol] = BoundedHttpProtocol) -> Iterator[str]:
    """Run `app` with uvicorn in a background thread (port 0: a free one); yield its URL.

    For tests, the load test and experiments: the server stops when the block ends. It has
    `serve`'s bounds; a test may give a `protocol` subclass with other limits.
    """
    import uvicorn

    sock = listen_socket(host, port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, **uvicorn_options(protocol=protocol))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="mnistlab-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {host}:{port} did not start")
            time.sleep(0.02)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
