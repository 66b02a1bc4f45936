"""Serving load: concurrent clients against `s2s-attn serve`, started here on loopback.

Starts `s2s-attn serve MODEL --port 0` as a subprocess (its log goes to a
temporary file), then:

1. load: `--clients` concurrent clients each send `--requests` predict
   requests of `--batch` words (a number, or a range such as `1-8` drawn
   per request), one after another (bounded in count, and in time by
   `--time-limit`); reports requests/s, p50/p99 latency, errors;
2. memory: `--max-size-requests` requests of `--max-batch-size` words, one
   at a time; reports the server's RSS after the first and after the last
   (issue 14: it must not grow by more than 300 MB). `0` skips it.

Any other flag goes to `s2s-attn serve` as it is (`--no-enable-batching`,
`--num-batch-threads 2`, ...). MODEL, if given, comes first.

The server's RSS is read from /proc (Linux) before the load and after each
phase, and so is the CPU time it spent on the load: per request, a figure that
other processes on the machine disturb less than requests/s. Words are random
lower-case letter strings (seeded), or the first column of `--words FILE`.
Only the runtime install and the standard library are needed (the client is
aiohttp's).

    python benchmarks/serving_load.py [saved_models/g2p_en] [--clients 64] [--requests 20]
    python benchmarks/serving_load.py --batch 1-8 --max-size-requests 0 --no-enable-batching
"""

import argparse
import asyncio
import os
import random
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import aiohttp

from keras_s2s_attn.options import ServingOptions


def start_server(model, log, max_batch_size, flags):
    """`s2s-attn serve MODEL --port 0 FLAGS...`; returns `(process, base URL of the model)`."""
    process = subprocess.Popen(
        ["s2s-attn", "serve", model, "--port", "0", "--max-batch-size", str(max_batch_size),
         *flags],
        stdout=subprocess.PIPE, stderr=log, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    ready, _, _ = select.select([process.stdout], [], [], 300)
    line = process.stdout.readline() if ready else ""
    match = re.search(r"at (http://127\.0\.0\.1:[0-9]+/v1/models/\S+)", line)
    if not match:
        process.kill()
        process.wait()
        log.seek(0)  # the log is a temporary file, gone once this exits: show its end
        tail = "\n".join(log.read().splitlines()[-15:])
        raise SystemExit(f"the server did not start: {line!r}; the end of its log:\n{tail}")
    return process, match.group(1)


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+) kB", status.read()).group(1)) / 1024


def cpu_seconds(pid):
    """The CPU time (user and system) the process has used, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_words(path, count, seed=0):
    if path:
        with open(path, encoding="utf-8") as handle:
            words = [line.split("\t")[0].strip() for line in handle if line.strip()]
        return (words * (count // len(words) + 1))[:count]
    rng = random.Random(seed)
    return ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 10)))
            for _ in range(count)]


def word_counts(text):
    """`--batch`: `N` words per request, or `LO-HI` (each request draws its own count)."""
    low, _, high = text.partition("-")
    try:
        counts = (int(low), int(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LO-HI; got {text!r}") from None
    if not 1 <= counts[0] <= counts[1]:
        raise argparse.ArgumentTypeError(f"expected 1 <= LO <= HI; got {text!r}")
    return counts


async def client(session, url, words, batch, requests, deadline, timeout, results, seed):
    """One client: `requests` predict requests in turn, until `deadline`; each of a number
    of words drawn from the range `batch`, with its own seed."""
    rng = random.Random(seed)
    for _ in range(requests):
        if time.monotonic() > deadline:
            return
        size = rng.randint(*batch)
        start = rng.randrange(max(1, len(words) - size))
        body = {"instances": words[start: start + size]}
        began = time.perf_counter()
        try:
            async with session.post(url, json=body, timeout=timeout) as response:
                await response.read()
                ok = response.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            ok = False
        results.append((time.perf_counter() - began, ok))


async def load(url, words, args):
    """Runs the clients at once; returns `(seconds, [(latency, ok), ...])`."""
    results = []
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    connector = aiohttp.TCPConnector(limit=args.clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.monotonic() + args.time_limit
        began = time.perf_counter()
        await asyncio.gather(*(client(session, url, words, args.batch, args.requests, deadline,
                                      timeout, results, seed) for seed in range(args.clients)))
        return time.perf_counter() - began, results


async def memory(url, words, pid, count, timeout):
    """`count` requests of all `words`, one at a time.

    Returns:
        `(RSS after the first, RSS after the last, requests that failed)`, in MB.
    """
    first, failed = None, 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        for _ in range(count):
            try:
                async with session.post(url, json={"instances": words}) as response:
                    await response.read()
                    failed += response.status != 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                failed += 1
            first = rss_mb(pid) if first is None else first
    return first, rss_mb(pid), failed


def main():
    defaults = ServingOptions()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        usage="%(prog)s [MODEL] [options] [s2s-attn serve flags]")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--batch", type=word_counts, default=(1, 1),
                        help="words per load request: N, or LO-HI drawn per request")
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    parser.add_argument("--max-size-requests", type=int, default=100)
    parser.add_argument("--words", help="a file of words, one per line (or TSV)")
    parser.add_argument("--time-limit", type=float, default=300.0,
                        help="seconds after which the clients stop sending")
    parser.add_argument("--request-timeout", type=float, default=120.0)
    # MODEL only first: as an optional positional anywhere, argparse took the value
    # of a flag passed through (`--num-batch-threads 4`) for the model.
    argv = sys.argv[1:]
    model = argv.pop(0) if argv and not argv[0].startswith("-") else "saved_models/g2p_en"
    args, flags = parser.parse_known_args(argv)
    args.model = model

    words = read_words(args.words, max(args.max_batch_size, args.batch[1] * args.requests))
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        process, base = start_server(args.model, log, args.max_batch_size, flags)
        url = base + ":predict"
        try:
            before, cpu = rss_mb(process.pid), cpu_seconds(process.pid)
            seconds, results = asyncio.run(load(url, words, args))
            after_load, cpu = rss_mb(process.pid), cpu_seconds(process.pid) - cpu
            first, last, refused = (asyncio.run(memory(
                url, words[:args.max_batch_size], process.pid, args.max_size_requests,
                args.request_timeout)) if args.max_size_requests else (None, None, 0))
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(60)
        log.seek(0)
        server_log = log.read()

    if len(results) < 2:
        raise SystemExit(f"only {len(results)} requests finished within --time-limit")
    percentiles = statistics.quantiles([latency for latency, _ in results], n=100)
    errors = sum(not ok for _, ok in results)
    print(f"server:  {base} (exit {process.returncode}); "
          f"{server_log.count(' ms instances=')} access lines, "
          f"{server_log.count('Traceback')} tracebacks")
    low, high = args.batch
    print(f"server flags: {' '.join(flags) or '(defaults)'}")
    print(f"load:    {args.clients} clients x {args.requests} requests of "
          f"{low if low == high else f'{low}-{high}'} word(s): "
          f"{len(results)} requests in {seconds:.1f} s = {len(results) / seconds:.1f} requests/s,"
          f" p50 {1000 * percentiles[49]:.1f} ms, p99 {1000 * percentiles[98]:.1f} ms, "
          f"{errors} errors; server CPU {cpu:.1f} s ({1000 * cpu / len(results):.1f} ms a "
          "request)")
    print(f"memory:  server RSS {before:.0f} MB before the load, {after_load:.0f} MB after it",
          end="; " if args.max_size_requests else "\n")
    if args.max_size_requests:
        print(f"{args.max_size_requests} requests of {args.max_batch_size} words: "
              f"{first:.0f} MB after the first, {last:.0f} MB after the last "
              f"({last - first:+.0f} MB), {refused} not 200")
    return 1 if errors or refused or process.returncode else 0


if __name__ == "__main__":
    sys.exit(main())
