"""`mnistlab serve`: load the model, claim the port, run uvicorn."""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mnistlab.errors import MnistlabError


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


def set_threads(threads: int) -> None:
    """PyTorch's threads for the model in this process (the onnx backend is given the same
    number when the predictor is loaded). One is best for serving on a small machine: the
    batches are small, and the other cores parse, decode and answer requests."""
    import torch

    torch.set_num_threads(threads)


def serve(model: str = "default", *, host: str = "127.0.0.1", port: int = 8000,
          backend: str = "torch", workers: int = 1, threads: int = 1, top_k: int = 3,
          log_level: str = "warning") -> None:
    """Serve the page and the API until Ctrl-C (or SIGTERM)."""
    import uvicorn

    from mnistlab.inference.predictor import Predictor
    from mnistlab.serve import app as app_module

    set_threads(threads)
    # load once here, also with several workers: a bad checkpoint is one line, before any worker
    predictor = Predictor.load(model, backend=backend, threads=threads)
    sock = listen_socket(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    name = predictor.info.get("model") or model
    print(f"mnistlab: serving model {name} ({backend}) at {url}  (API docs: {url}docs; "
          f"{workers} worker{'s' if workers > 1 else ''}; Ctrl-C stops)", flush=True)
    common = dict(log_level=log_level, access_log=False, timeout_graceful_shutdown=5)
    if workers == 1:
        config = uvicorn.Config(app_module.create_app(predictor, top_k=top_k), **common)
        uvicorn.Server(config).run(sockets=[sock])
        return
    # several processes: each worker builds its own app (and model) from these variables, and
    # uvicorn binds the port again for them; the check above has already given any clear error
    sock.close()
    os.environ[app_module.ENV_MODEL] = str(model)
    os.environ[app_module.ENV_BACKEND] = backend
    os.environ[app_module.ENV_TOP_K] = str(top_k)
    os.environ[app_module.ENV_THREADS] = str(threads)
    uvicorn.run("mnistlab.serve.app:app_from_environment", factory=True, host=host, port=port,
                workers=workers, **common)


@contextmanager
def running_server(app: Any, host: str = "127.0.0.1", port: int = 0,
                   timeout: float = 30) -> Iterator[str]:
    """Run `app` with uvicorn in a background thread (port 0: a free one); yield its URL.

    For tests, the load test and experiments: the server stops when the block ends.
    """
    import uvicorn

    sock = listen_socket(host, port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=2)
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
