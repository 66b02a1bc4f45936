"""Merges concurrent calls of one function into batches, as TF Serving's batching does.

Plain Python (asyncio and a thread pool, no TensorFlow): `s2s-attn serve`
runs every predict request through a `Batcher`, whose batch threads call the
SavedModel's signature once per batch. The parameters are those of TF
Serving's `batching_parameters.txt`: `max_batch_size`, `batch_timeout_micros`,
`max_enqueued_batches` and `num_batch_threads`.
"""

import asyncio
import concurrent.futures
import logging

log = logging.getLogger("keras_s2s_attn.batching")


class QueueFull(Exception):
    """The queue already holds `max_enqueued_batches` batches' worth of rows (TF Serving
    answers UNAVAILABLE)."""


class _Task:
    """One call waiting in the queue: its key, payload, rows, arrival time and future."""

    __slots__ = ("arrived", "future", "key", "payload", "rows")

    def __init__(self, key, payload, rows, arrived, future):
        self.key, self.payload, self.rows = key, payload, rows
        self.arrived, self.future = arrived, future


class Batcher:
    """Runs `process` on batches of the calls that wait together, in batch threads.

    Formation: a free batch thread takes the oldest waiting call together
    with the later ones of the same key, in order, as long as they fit in
    `max_batch_size` rows. When no batch is running it does so at once, so
    a lone call is never held. While another batch runs, it waits up to
    `batch_timeout_micros` after the oldest call arrived for the batch to
    fill, and starts it sooner when it is full or the running batches end.
    (TF Serving holds every request for the timeout, a lone one too. Without
    the wait, a thread freed under load starts on the one call that came in
    first, so half the batches hold a single call: on two cores, 64 clients
    of 1-8 words got ~10% fewer answers a second for ~12% more CPU a request.)

    If `process` raises on a batch of several calls, each of them is run
    again alone, so that a call it rejects fails alone and the others get
    their results.

    Args:
        process: `process(payloads) -> results`, one result per payload in
            order; called in a batch thread with payloads of one key.
        max_batch_size: The most rows in one batch.
        batch_timeout_micros: How long a free thread may wait for a batch
            to fill while another batch runs, in microseconds after its
            oldest call arrived; 0: never wait.
        max_enqueued_batches: The queue holds at most this many times
            `max_batch_size` rows; a call past them raises `QueueFull`.
        num_batch_threads: How many batches run at once.

    Attributes:
        batches: How many batches have started.
        calls: How many calls they held.
        max_queued_rows: The most rows the queue holds.
    """

    def __init__(self, process, max_batch_size, batch_timeout_micros=0, max_enqueued_batches=10,
                 num_batch_threads=1):
        self._process = process
        self._max_batch_size = max_batch_size
        self._timeout = batch_timeout_micros / 1e6
        self.max_queued_rows = max_enqueued_batches * max_batch_size
        self._threads = num_batch_threads
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=num_batch_threads, thread_name_prefix="batch")
        self._queue = []  # the waiting tasks, oldest first
        self._queued_rows = 0
        self._running = 0
        self._timer = None
        self.batches = self.calls = 0

    @property
    def queued_rows(self):
        """The rows of the calls waiting in the queue."""
        return self._queued_rows

    async def run(self, key, payload, rows):
        """Queues one call and waits for its result.

        A call whose caller is cancelled (a timeout, a client gone) while it
        waits leaves the queue and never runs.

        Args:
            key: Calls of equal keys may share a batch; `None` never does.
            payload: What `process` gets for this call.
            rows: Its rows, at most `max_batch_size`.

        Returns:
            What `process` returned for `payload`.

        Raises:
            QueueFull: If the queue cannot take `rows` more rows.
            ValueError: If `rows` is more than `max_batch_size`.
            Exception: Whatever `process` raised on `payload` alone.
        """
        if rows > self._max_batch_size:
            raise ValueError(f"rows must be at most max_batch_size ({self._max_batch_size}); "
                             f"got {rows}")
        if self._queued_rows + rows > self.max_queued_rows:
            raise QueueFull(f"{self._queued_rows} rows wait, and at most "
                            f"{self.max_queued_rows} may")
        loop = asyncio.get_running_loop()
        task = _Task(key, payload, rows, loop.time(), loop.create_future())
        self._queue.append(task)
        self._queued_rows += rows
        self._dispatch()
        try:
            return await task.future
        except asyncio.CancelledError:
            if task in self._queue:
                self._remove([task])
            raise

    def close(self):
        """Cancels the calls still queued and stops the batch threads (running batches end)."""
        if self._timer:
            self._timer.cancel()
        for task in self._queue:
            task.future.cancel()
        self._remove(self._queue)
        self._executor.shutdown(wait=False)

    def _remove(self, tasks):
        gone = set(tasks)
        self._queue = [task for task in self._queue if task not in gone]
        self._queued_rows -= sum(task.rows for task in gone)

    def _dispatch(self):
        """Starts the batches that are ready on the free threads; else waits for the first."""
        if self._timer:
            self._timer.cancel()
            self._timer = None
        while self._running < self._threads and self._queue:
            batch, wait = self._next_batch()
            if not batch:
                if wait is not None:
                    self._timer = asyncio.get_running_loop().call_later(wait, self._dispatch)
                return
            self._start(batch)

    def _next_batch(self):
        """The first batch that is ready, by the age of its oldest call: one that is
        full, or has waited the timeout, or any while no batch runs.

        Returns:
            `(tasks, 0)`; or `([], seconds)` when none is ready yet, with the
            time until the first one is (None when no task waits).
        """
        now, wait, seen = asyncio.get_running_loop().time(), None, set()
        for oldest in self._queue:
            if oldest.future.done():  # cancelled: leaves the queue in `run`
                continue
            if oldest.key is None:
                return [oldest], 0
            if oldest.key in seen:
                continue
            seen.add(oldest.key)
            batch, full = self._fill(oldest)
            if full or not self._running or now - oldest.arrived >= self._timeout:
                return batch, 0
            left = oldest.arrived + self._timeout - now
            wait = left if wait is None else min(wait, left)
        return [], wait

    def _fill(self, oldest):
        """`oldest` and the later tasks of its key, in order, up to the first that does not
        fit; and whether the batch is full (a task of the key is left out, or no row is)."""
        batch, rows = [], 0
        for task in self._queue[self._queue.index(oldest):]:
            if task.key != oldest.key or task.future.done():
                continue
            if rows + task.rows > self._max_batch_size:
                return batch, True
            batch.append(task)
            rows += task.rows
        return batch, rows == self._max_batch_size

    def _start(self, batch):
        self._remove(batch)
        self._running += 1
        self.batches += 1
        self.calls += len(batch)
        work = asyncio.get_running_loop().run_in_executor(
            self._executor, self._call, [task.payload for task in batch])
        work.add_done_callback(lambda done: self._finish(batch, done))

    def _call(self, payloads):
        """In a batch thread: `[(result, error), ...]` of `process` on the batch, or, if
        it raises, of each payload alone."""
        try:
            results = self._process(payloads)
            if len(results) != len(payloads):
                raise ValueError(f"process returned {len(results)} results for "
                                 f"{len(payloads)} payloads")
        except Exception as error:  # noqa: BLE001 (delivered to its caller)
            if len(payloads) == 1:
                return [(None, error)]
            log.info("a batch of %d calls failed (%s: %s); running each alone",
                     len(payloads), type(error).__name__, error)
            return [self._call([payload])[0] for payload in payloads]
        return [(result, None) for result in results]

    def _finish(self, batch, done):
        """Back on the event loop: delivers each task's result, then starts what is ready."""
        self._running -= 1
        for task, (result, error) in zip(batch, done.result()):
            if task.future.done():  # its caller is gone
                continue
            if error is None:
                task.future.set_result(result)
            else:
                task.future.set_exception(error)
        self._dispatch()
