"""What the benchmark scripts share: a median wall-clock time after a warm-up."""

import statistics
import time


def timed(function, repeats):
    """Calls `function` once untimed (tracing, compilation), then `repeats` times.

    Returns the median of the timed calls, in seconds.
    """
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
