"""The model's own thread: every request waiting at once is answered by one model call.

The event loop never waits for the model, and concurrent clients share model calls.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

import numpy as np

from mnistlab.inference.predictor import Predictor

MAX_BATCH = 256  # images in one model call


class Batcher:
    """Runs `predictor.probabilities` in one thread, on every request waiting at once.

    While the model computes one batch, new requests queue up; the next call takes them all
    (up to `max_batch` images). With one request at a time this is batch-1 inference with one
    thread hop; under load, one model call serves many requests.
    """

    def __init__(self, predictor: Predictor, max_batch: int = MAX_BATCH):
        self.predictor = predictor
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, 28, 28) uint8 -> (N, 10) float32, computed in the model's thread."""
        self._start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((images, future, loop))
        return await future

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="mnistlab-model",
                                                    daemon=True)
                    self._thread.start()

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=10)

    def _run(self) -> None:
        stop = False
        while not stop:
            job = self._queue.get()
            if job is None:
                return
            jobs, count = [job], len(job[0])
            while count < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
                count += len(job[0])
            try:
                images = jobs[0][0] if len(jobs) == 1 else np.concatenate([j[0] for j in jobs])
                probs = self.predictor.probabilities(images)
            except BaseException as e:  # handed to each request, which answers a clean error
                for _, future, loop in jobs:
                    loop.call_soon_threadsafe(_settle, future, None, e)
                continue
            start = 0
            for images, future, loop in jobs:
                end = start + len(images)
                loop.call_soon_threadsafe(_settle, future, probs[start:end], None)
                start = end


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
