"""The batcher behind `s2s-attn serve`, with a fake model function (no TensorFlow)."""

import asyncio
import threading
import time

import pytest

from keras_s2s_attn.batching import Batcher, QueueFull


class FakeModel:
    """`process` for a Batcher: a payload is a list of numbers, its result their squares.

    Records each call's payloads and when it started; a payload holding -1 is
    rejected (ValueError); while `gate` is clear, a call holding 0 waits for it.
    """

    def __init__(self, seconds=0.0):
        self.seconds, self.calls, self.started = seconds, [], []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, payloads):
        self.calls.append(payloads)
        self.started.append(time.monotonic())
        if any(0 in payload for payload in payloads):
            assert self.gate.wait(30)
        time.sleep(self.seconds)
        if any(-1 in payload for payload in payloads):
            raise ValueError("-1 is not a valid input")
        return [[x * x for x in payload] for payload in payloads]


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


async def call(batcher, payload, key="k"):
    return await batcher.run(key, payload, len(payload))


def test_concurrent_calls_are_merged_and_each_gets_its_own_rows():
    model = FakeModel(seconds=0.1)
    batcher = Batcher(model, max_batch_size=30, num_batch_threads=1)
    payloads = [list(range(100 * i + 1, 100 * i + 2 + i % 8)) for i in range(16)]  # 1-8 rows

    async def main():
        return await asyncio.gather(*(call(batcher, payload) for payload in payloads))

    results = run(main())
    assert results == [[x * x for x in payload] for payload in payloads]
    # The first call finds the thread free and runs alone; the others wait meanwhile and
    # are merged, in order, up to 30 rows a batch.
    assert model.calls[0] == [payloads[0]]
    assert [payload for batch in model.calls for payload in batch] == payloads
    assert all(sum(map(len, batch)) <= 30 for batch in model.calls)
    assert (batcher.batches, batcher.calls) == (len(model.calls), 16)
    assert [sum(map(len, batch)) for batch in model.calls] == [1, 27, 29, 15]


def test_only_calls_of_one_key_share_a_batch_and_none_runs_alone():
    model = FakeModel()
    model.gate.clear()
    batcher = Batcher(model, max_batch_size=100, num_batch_threads=1)
    keys = ["a", "b", None, "a", None, "b", "a"]

    async def main():
        first = asyncio.create_task(call(batcher, [0]))  # holds the thread
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(call(batcher, [i + 1], key)) for i, key in enumerate(keys)]
        await asyncio.sleep(0.05)
        model.gate.set()
        return await first, await asyncio.gather(*rest)

    first, rest = run(main())
    assert first == [0] and rest == [[(i + 1) ** 2] for i in range(len(keys))]
    # In the order of each batch's oldest call: a (1, 4, 7), b (2, 6), None (3), None (5).
    assert model.calls[1:] == [[[1], [4], [7]], [[2], [6]], [[3]], [[5]]]


@pytest.mark.parametrize("timeout", [0.0, 0.4])
def test_a_call_that_finds_no_batch_running_starts_at_once(timeout):
    """A lone client is never held, whatever the timeout: there is nothing to wait for."""
    model = FakeModel()
    batcher = Batcher(model, max_batch_size=8, batch_timeout_micros=int(timeout * 1e6),
                      num_batch_threads=2)

    async def main():
        sent = time.monotonic()
        await call(batcher, [3])
        return model.started[0] - sent

    held = run(main())
    assert held < 0.1, held


def call_beside_a_running_batch(timeout, release_after=None):
    """A call sent while another batch runs (held by the gate) on one of two threads.

    Returns `(how long it waited to start, its result)`; the gate opens once it
    has started, or after `release_after` seconds."""
    model = FakeModel()
    model.gate.clear()
    batcher = Batcher(model, max_batch_size=8, batch_timeout_micros=int(timeout * 1e6),
                      num_batch_threads=2)

    async def main():
        first = asyncio.create_task(call(batcher, [0]))
        await asyncio.sleep(0.05)
        assert len(model.started) == 1
        sent = time.monotonic()
        second = asyncio.create_task(call(batcher, [3]))
        if release_after is not None:
            await asyncio.sleep(release_after)
            model.gate.set()
        result = await second
        model.gate.set()
        await first
        return model.started[1] - sent, result

    return run(main())


def test_a_call_beside_a_running_batch_waits_no_longer_than_the_timeout():
    """The free thread waits 0.4 s for more calls to join, then runs the call alone
    while the other batch still runs."""
    held, result = call_beside_a_running_batch(0.4)
    assert result == [9]
    assert 0.39 <= held < 0.7, held


def test_a_waiting_call_starts_once_the_running_batch_ends():
    """A timeout of 10 s, but the running batch ends after 0.2 s: the call starts then."""
    held, result = call_beside_a_running_batch(10.0, release_after=0.2)
    assert result == [9]
    assert 0.19 <= held < 1.0, held


def test_a_full_batch_starts_without_waiting_for_the_timeout():
    """Beside a running batch, two calls fill a batch of 4 rows: it starts at once,
    not after the 10 s timeout."""
    model = FakeModel()
    model.gate.clear()
    batcher = Batcher(model, max_batch_size=4, batch_timeout_micros=10_000_000,
                      num_batch_threads=2)

    async def main():
        first = asyncio.create_task(call(batcher, [0]))
        await asyncio.sleep(0.05)
        sent = time.monotonic()
        results = await asyncio.gather(call(batcher, [1, 2]), call(batcher, [3, 4]))
        model.gate.set()
        await first
        return model.started[1] - sent, results

    held, results = run(main())
    assert held < 3.0 and results == [[1, 4], [9, 16]]
    assert model.calls == [[[0]], [[1, 2], [3, 4]]]


def test_a_call_the_model_rejects_fails_only_itself():
    model = FakeModel()
    model.gate.clear()
    batcher = Batcher(model, max_batch_size=100, num_batch_threads=1)

    async def main():
        first = asyncio.create_task(call(batcher, [0]))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(call(batcher, payload))
                for payload in ([1, 2], [3, -1], [5])]
        await asyncio.sleep(0.05)
        model.gate.set()
        await first
        return await asyncio.gather(*rest, return_exceptions=True)

    good, bad, other = run(main())
    assert good == [1, 4] and other == [25]
    assert isinstance(bad, ValueError) and str(bad) == "-1 is not a valid input"
    # The merged call failed, then each ran alone.
    assert model.calls[1:] == [[[1, 2], [3, -1], [5]], [[1, 2]], [[3, -1]], [[5]]]


def test_a_full_queue_refuses_at_once_and_takes_calls_again_once_it_drains():
    model = FakeModel()
    model.gate.clear()
    batcher = Batcher(model, max_batch_size=2, max_enqueued_batches=2, num_batch_threads=1)

    async def main():
        first = asyncio.create_task(call(batcher, [0, 0]))  # runs: not in the queue
        await asyncio.sleep(0.05)
        queued = [asyncio.create_task(call(batcher, payload)) for payload in ([1, 2], [3, 4])]
        await asyncio.sleep(0.05)
        assert batcher.queued_rows == 4 == batcher.max_queued_rows
        with pytest.raises(QueueFull):
            await call(batcher, [5])
        model.gate.set()
        await asyncio.gather(first, *queued)
        return await call(batcher, [5])

    assert run(main()) == [25]


def test_a_cancelled_call_leaves_the_queue_and_never_runs():
    """A client gone (or timed out) while its call waits: the call is not computed for
    nobody, and the others are answered."""
    model = FakeModel()
    model.gate.clear()
    batcher = Batcher(model, max_batch_size=100, num_batch_threads=1)

    async def main():
        first = asyncio.create_task(call(batcher, [0]))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(call(batcher, [7, 7]))
        timed_out = asyncio.create_task(asyncio.wait_for(call(batcher, [8]), 0.05))
        kept = asyncio.create_task(call(batcher, [9]))
        await asyncio.sleep(0.05)
        gone.cancel()
        with pytest.raises(asyncio.TimeoutError):
            await timed_out
        assert batcher.queued_rows == 1
        model.gate.set()
        return await first, await kept

    assert run(main()) == ([0], [81])
    assert model.calls == [[[0]], [[9]]]
