"""Dynamic batcher: gathers concurrent requests into batches and runs them on one inference thread.

Written by hand because neither FastAPI nor uvicorn batches requests: each request is its own
coroutine, and calling the model once per request wastes the CPU's (or GPU's) matrix units.
`Batcher.submit(rows)` is awaited on the event loop; it puts the request's token ids on a bounded
queue (`QueueFull` past `max_queue` inputs, never an unbounded one) and returns its logits.
One worker thread takes the oldest requests, waits up to `wait_s` for more, packs them while the
padded batch (rows x longest row) stays within `max_batch_tokens`, sorts the rows by length, runs
`run_batch` once per batch off the event loop and hands every request its own rows back, in
order. An exception inside `run_batch` fails that batch's requests only; the thread goes on.
`stop()` lets the thread finish everything queued (the drain on shutdown), then joins it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


class QueueFull(Exception):
    """The batcher already holds `max_queue` inputs; the caller should answer 429."""


class BatcherStopped(Exception):
    """The batcher is shutting down and takes no new requests."""


@dataclass
class _Job:
    rows: list[np.ndarray]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    longest: int = field(init=False)

    def __post_init__(self):
        self.longest = max((len(r) for r in self.rows), default=0)


def _noop(*_args) -> None:
    pass


@dataclass
class BatchObserver:
    """Callbacks the server's metrics hang on (all optional)."""

    on_batch: Callable[[int, int], None] = _noop  # (inputs, requests) per batch
    on_queue_depth: Callable[[int], None] = _noop  # inputs waiting or running


class Batcher:
    """Bounded request queue + one inference thread running `run_batch(rows) -> logits`."""

    def __init__(self, run_batch: Callable[[list[np.ndarray]], np.ndarray], *, max_batch_tokens: int = 16384,
                 wait_s: float = 0.005, max_queue: int = 512, max_batch_requests: int | None = None,
                 observer: BatchObserver | None = None):
        self.run_batch = run_batch
        self.max_batch_tokens = max_batch_tokens
        self.wait_s = wait_s
        self.max_queue = max_queue
        self.max_batch_requests = max_batch_requests
        self.observer = observer or BatchObserver()
        self._jobs: deque[_Job] = deque()
        self._held = 0  # inputs queued or in the running batch
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ event-loop side

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="budgetlora-inference", daemon=True)
        self._thread.start()

    async def submit(self, rows: list[np.ndarray]) -> np.ndarray:
        """Logits for `rows` (one request), computed in some batch; QueueFull if the queue is full."""
        loop = asyncio.get_running_loop()
        job = _Job(list(rows), loop.create_future(), loop)
        with self._cond:
            if self._stopping:
                raise BatcherStopped("the server is shutting down")
            if self._held + len(job.rows) > self.max_queue:
                raise QueueFull(f"the queue holds {self._held} inputs (--max-queue {self.max_queue}); retry later")
            self._jobs.append(job)
            self._held += len(job.rows)
            depth = self._held
            self._cond.notify()
        self.observer.on_queue_depth(depth)
        return await job.future

    def stop(self, timeout: float | None = None) -> None:
        """Take nothing new, answer everything queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def held(self) -> int:
        return self._held

    @property
    def alive(self) -> bool:
        """Whether the inference thread is running."""
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------ worker-thread side

    def _work(self) -> None:
        while True:
            jobs = self._next_batch()
            if jobs is None:
                return
            self._run(jobs)

    def _next_batch(self) -> list[_Job] | None:
        """The next batch of whole requests (oldest first); None once stopping with nothing left."""
        with self._cond:
            while not self._jobs:
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self.wait_s
            while not self._stopping and not self._full() and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return self._take()

    def _full(self) -> bool:
        """Whether the queued requests already fill a batch (so waiting longer gains nothing)."""
        if self.max_batch_requests is not None and len(self._jobs) >= self.max_batch_requests:
            return True
        rows = sum(len(j.rows) for j in self._jobs)
        longest = max(j.longest for j in self._jobs)
        return rows * longest >= self.max_batch_tokens

    def _take(self) -> list[_Job]:
        """Pop requests while the padded batch fits the token budget; the first one always goes."""
        taken, rows, longest = [], 0, 0
        while self._jobs:
            job = self._jobs[0]
            new_rows, new_longest = rows + len(job.rows), max(longest, job.longest)
            too_many = self.max_batch_requests is not None and len(taken) >= self.max_batch_requests
            if taken and (too_many or new_rows * new_longest > self.max_batch_tokens):
                break
            taken.append(self._jobs.popleft())
            rows, longest = new_rows, new_longest
        return taken

    def _run(self, jobs: list[_Job]) -> None:
        rows = [row for job in jobs for row in job.rows]
        self.observer.on_batch(len(rows), len(jobs))
        try:
            order = np.argsort([len(r) for r in rows], kind="stable")  # length-sorted: least padding
            logits = np.empty((len(rows), 0), dtype=np.float32)
            if rows:
                sorted_logits = np.asarray(self.run_batch([rows[i] for i in order]))
                logits = np.empty_like(sorted_logits)
                logits[order] = sorted_logits
            error = None
        except Exception as e:  # noqa: BLE001 -- one bad batch fails its requests, never the thread
            error = e
        start = 0
        for job in jobs:
            part = None if error else logits[start:start + len(job.rows)]
            start += len(job.rows)
            try:
                job.loop.call_soon_threadsafe(_settle, job.future, part, error)
            except RuntimeError:  # the event loop has closed: nobody is waiting any more
                pass
        with self._cond:
            self._held -= len(rows)
            depth = self._held
        self.observer.on_queue_depth(depth)


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():  # the client went away and its request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
