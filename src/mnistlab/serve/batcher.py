"""The model's own thread: every request waiting at once is answered by one model call.

The event loop never waits for the model, and concurrent clients share model calls. No request
waits for the model longer than the batcher's `timeout`: past it, the request is answered 503
`model_timeout` and freed, and the model call that kept it waiting is interrupted.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from mnistlab.inference.errors import InferenceError, InferenceInterrupted
from mnistlab.inference.predictor import Predictor
from mnistlab.serve.errors import ModelTimeoutError

MAX_BATCH = 256  # images in one model call
# seconds a request may wait for the model: a full batch of 256 takes about 0.1 s here and a
# request under the heaviest load measured waits about 1 s (docs/RELIABILITY.md's soak), so only
# a model that is stuck (an ONNX Loop of 10^15 trips) or a machine far past its capacity gets here
MODEL_TIMEOUT = 10.0
# seconds `close` waits for the model's thread to end: a model call takes milliseconds, and one
# that does not end when interrupted (a PyTorch forward pass cannot be) is left to the process's
# exit (the thread is a daemon) rather than holding up a shutdown that must take a second or two
CLOSE_WAIT = 1.0


@dataclass
class _Job:
    images: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic() past which the request has been answered 503


class Batcher:
    """Runs `predictor.probabilities` in one thread, on every request waiting at once.

    While the model computes one batch, new requests queue up; the next call takes them all
    (up to `max_batch` images). With one request at a time this is batch-1 inference with one
    thread hop; under load, one model call serves many requests.

    A request waits at most `timeout` seconds: then it gets ModelTimeoutError (a 503), and the
    model call it waits behind is stopped with `predictor.interrupt()` once that call has
    itself run `timeout` seconds. While a call runs over time, new requests are refused at
    once instead of queueing behind it, so that a model that cannot be stopped holds no
    growing queue either.
    """

    def __init__(self, predictor: Predictor, max_batch: int = MAX_BATCH,
                 timeout: float = MODEL_TIMEOUT):
        if not timeout > 0:
            raise ValueError(f"the model's time bound must be positive, got {timeout}")
        self.predictor = predictor
        self.max_batch = max_batch
        self.timeout = timeout
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()  # set by `close` for the thread running now
        self._lock = threading.Lock()
        self._call_began: float | None = None  # monotonic start of the model call in progress
        self._interrupted: float | None = None  # the start of the last call interrupted

    async def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, 28, 28) uint8 -> (N, 10) float32, computed in the model's thread, or
        ModelTimeoutError after `timeout` seconds."""
        self._start()
        if self._over_time():
            raise ModelTimeoutError(f"the model has been busy for over {self.timeout:g} s with "
                                    "an earlier request: try again later")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Job(images, future, loop, time.monotonic() + self.timeout))
        timer = loop.call_later(self.timeout, self._expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _over_time(self) -> bool:
        """Whether the model call in progress has run longer than `timeout`."""
        began = self._call_began  # one read: the model's thread may change it at any time
        return began is not None and time.monotonic() - began > self.timeout

    def _expire(self, future: asyncio.Future) -> None:
        """On the event loop, `timeout` after a request was queued: answer it 503, and have
        the model call in progress interrupted once it has itself run `timeout` seconds (a
        call that began after this request came may have run a little less by now)."""
        if future.done():
            return
        future.set_exception(ModelTimeoutError(
            f"the model did not answer within {self.timeout:g} s"))
        began = self._call_began
        if began is not None:
            delay = max(0.0, began + self.timeout - time.monotonic())
            asyncio.get_running_loop().call_later(delay, self._interrupt_if_running, began)

    def _interrupt_if_running(self, began: float) -> None:
        """Interrupt the model call that began at `began` if it still runs (once)."""
        if self._call_began == began and self._interrupted != began:
            self._interrupted = began
            self.predictor.interrupt()

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    # a queue and a stop event of its own: a thread left behind by `close`
                    # (stuck in a model call) never takes the next thread's requests
                    self._queue, self._stop = queue.SimpleQueue(), threading.Event()
                    self._thread = threading.Thread(target=self._run,
                                                    args=(self._queue, self._stop),
                                                    name="mnistlab-model", daemon=True)
                    self._thread.start()

    def close(self) -> None:
        """Stop the model's thread: the call in progress is interrupted, waiting requests are
        left to the server's shutdown, and the thread is given CLOSE_WAIT seconds to end."""
        with self._lock:
            thread, self._thread = self._thread, None
            jobs, stop = self._queue, self._stop
        if thread is None:
            return
        stop.set()
        jobs.put(None)  # wakes the thread if it is waiting for a request
        if self._call_began is not None:
            self.predictor.interrupt()
        thread.join(timeout=CLOSE_WAIT)

    def _run(self, waiting: queue.SimpleQueue, stop: threading.Event) -> None:
        while not stop.is_set():
            jobs = self._take_jobs(waiting)
            if jobs is None:
                return
            now = time.monotonic()
            self._compute([job for job in jobs if now < job.deadline])  # the rest got their 503

    def _take_jobs(self, waiting: queue.SimpleQueue) -> list[_Job] | None:
        """Every request waiting, up to `max_batch` images, waiting for the first; None once
        the batcher is closed."""
        job = waiting.get()
        if job is None:
            return None
        jobs, count = [job], len(job.images)
        while count < self.max_batch:
            try:
                job = waiting.get_nowait()
            except queue.Empty:
                break
            if job is None:  # closing: the thread's stop event ends the loop after this batch
                break
            jobs.append(job)
            count += len(job.images)
        return jobs

    def _compute(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        self._call_began = time.monotonic()
        try:
            images = jobs[0].images if len(jobs) == 1 else np.concatenate([j.images for j in jobs])
            probs = self.predictor.probabilities(images)
        except InferenceInterrupted:  # stopped for running over time (or for a shutdown)
            _settle_all(jobs, ModelTimeoutError(f"the model did not answer within "
                                                f"{self.timeout:g} s"))
            return
        except InferenceError as e:
            if len(jobs) == 1:
                _settle_all(jobs, e)
                return
            # one request's images failed the model: the others, each alone, must not fail too
            for job in jobs:
                self._compute([job])
            return
        except BaseException as e:  # handed to each request, which answers a clean error
            _settle_all(jobs, e)
            return
        finally:
            self._call_began = None
        start = 0
        for job in jobs:
            end = start + len(job.images)
            _call_on_loop(job, probs[start:end], None)
            start = end


def _settle_all(jobs: list[_Job], error: BaseException) -> None:
    for job in jobs:
        _call_on_loop(job, None, error)


def _call_on_loop(job: _Job, result: Any, error: BaseException | None) -> None:
    try:
        job.loop.call_soon_threadsafe(_settle, job.future, result, error)
    except RuntimeError:  # the server's loop is closed: nobody is waiting any more
        pass


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # answered 503 already, or the client went away and it was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
