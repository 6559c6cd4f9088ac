"""Benchmark: many concurrent streams through /invocations against Triton's generate_stream.

A decoupled model that costs nothing (streams.py writes it into a temporary
repository: one Python-backend instance whose single timer thread sends each
stream's tokens `--interval-ms` apart, the first at once) makes the front the
only thing that can fall behind. For each level of `--concurrency`, that many
clients each send one streaming request after another for `--seconds`, first
to serve's /invocations (a simple JSON body: nginx -> the payload service ->
Triton's generate_stream, answered as JSON Lines), then to Triton's own
generate_stream route on the same Triton (server-sent events), taking turns
for `--rounds` rounds. The clients run in `--processes` processes (uvloop),
on `--load-cpus` if given, so the load generator is not the limit.

Printed per path and level: tokens per second (goal: serve >= 0.95x Triton's),
the p99 gap between consecutive tokens of a stream (goal: <= 1.1x), and the
median time to the first token, whose difference is the latency serve adds
beside the model's own first-token time (Triton's figure).

Run: `.venv/bin/python build/bench/streams.py [--concurrency 64 256] [--seconds 10]`.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from array import array
from pathlib import Path

from invocations import cpu_list
from serve_under_test import serve_with_reference

MODEL = "token_streamer"
MARKER = b'"text_output"'
THROUGHPUT_GOAL = 0.95
GAP_GOAL = 1.1
SERVE = "serve /invocations"
REFERENCE = "Triton generate_stream"

CONFIG = """\
name: "token_streamer"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [
  { name: "text_input", data_type: TYPE_STRING, dims: [ 1 ] },
  { name: "max_new_tokens", data_type: TYPE_INT32, dims: [ 1 ], optional: true }
]
output [ { name: "text_output", data_type: TYPE_STRING, dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
parameters { key: "INTERVAL_MS", value: { string_value: "%s" } }
"""

MODEL_PY = '''\
"""Streams max_new_tokens tokens, INTERVAL_MS apart, from one timer thread."""
import heapq
import json
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.interval = float(parameters["INTERVAL_MS"]["string_value"]) / 1000
        self.ready = threading.Condition()
        self.due = []
        self.order = 0
        threading.Thread(target=self._send, daemon=True).start()

    def execute(self, requests):
        now = time.monotonic()
        with self.ready:
            for request in requests:
                tokens = pb_utils.get_input_tensor_by_name(request, "max_new_tokens")
                count = int(tokens.as_numpy().reshape(-1)[0]) if tokens is not None else 16
                self.order += 1
                heapq.heappush(self.due, (now, self.order, request.get_response_sender(), count))
            self.ready.notify()
        return None

    def _send(self):
        token = pb_utils.Tensor("text_output", np.array([b"tok "], dtype=np.object_))
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        while True:
            with self.ready:
                while not self.due or self.due[0][0] > time.monotonic():
                    self.ready.wait(self.due[0][0] - time.monotonic() if self.due else None)
                due, order, sender, count = heapq.heappop(self.due)
                if count > 1:
                    heapq.heappush(self.due, (due + self.interval, order, sender, count - 1))
            response = pb_utils.InferenceResponse(output_tensors=[token])
            sender.send(response, flags=final if count == 1 else 0)
'''


def write_repository(folder: Path, interval_ms: float) -> Path:
    model = folder / MODEL
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(CONFIG % interval_ms)
    (model / "1" / "model.py").write_text(MODEL_PY)
    return folder


async def _client(
    host: str, port: int, request: bytes, deadline: float, gaps: array, firsts: array
) -> int:
    """Streams one after another on one connection until `deadline`; returns tokens seen."""
    reader, writer = await asyncio.open_connection(host, port)
    tokens = 0
    tail = len(MARKER) - 1
    try:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"answer: {head[:200]!r}")
            last = None
            carry = b""
            while True:
                data = await reader.read(65536)
                if not data:
                    raise SystemExit("the server closed a stream")
                now = time.perf_counter()
                window = carry + data
                seen = window.count(MARKER)
                if seen:
                    if last is None:
                        firsts.append(now - sent)
                    else:
                        gaps.append(now - last)
                    gaps.extend([0.0] * (seen - 1))
                    last = now
                    tokens += seen
                carry = window[-tail:]
                # The last chunk of a chunked answer ends the stream.
                if window.endswith(b"\r\n0\r\n\r\n"):
                    break
    finally:
        writer.close()
    return tokens


def _process(
    url: str, path: str, body: bytes, streams: int, seconds: float, cpus: set[int] | None, out
) -> None:
    import uvloop

    if cpus:
        os.sched_setaffinity(0, cpus)
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    gaps, firsts = array("d"), array("d")

    async def run() -> int:
        deadline = time.perf_counter() + seconds
        counts = await asyncio.gather(
            *(_client(host, int(port), request, deadline, gaps, firsts) for _ in range(streams))
        )
        return sum(counts)

    started = time.perf_counter()
    tokens = uvloop.run(run())
    out.send((tokens, time.perf_counter() - started, gaps.tobytes(), firsts.tobytes()))


def measure(
    url: str, path: str, body: bytes, streams: int, args: argparse.Namespace
) -> tuple[float, float, float]:
    """(tokens/s, p99 gap ms, median first token ms) for `streams` concurrent clients."""
    processes = max(1, min(args.processes, streams))
    pipes, workers = [], []
    for index in range(processes):
        share = streams // processes + (1 if index < streams % processes else 0)
        receive, send = multiprocessing.Pipe(duplex=False)
        worker = multiprocessing.Process(
            target=_process,
            args=(url, path, body, share, args.seconds, args.load_cpus, send),
        )
        worker.start()
        pipes.append(receive)
        workers.append(worker)
    tokens, elapsed, gaps, firsts = 0, 0.0, array("d"), array("d")
    for receive, worker in zip(pipes, workers, strict=True):
        count, seconds, gap_bytes, first_bytes = receive.recv()
        worker.join()
        tokens += count
        elapsed = max(elapsed, seconds)
        gaps.frombytes(gap_bytes)
        firsts.frombytes(first_bytes)
    ordered = sorted(gaps)
    p99 = ordered[int(0.99 * (len(ordered) - 1))] if ordered else float("nan")
    return tokens / elapsed, p99 * 1e3, statistics.median(firsts) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seconds", type=float, default=10, help="per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per level")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    parser.add_argument("--interval-ms", type=float, default=10, help="model's inter-token time")
    parser.add_argument("--processes", type=int, default=4, help="client processes")
    parser.add_argument("--server-cpus", type=cpu_list, help="cores for serve and Triton")
    parser.add_argument("--load-cpus", type=cpu_list, help="cores for the clients")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    everything = os.sched_getaffinity(0)
    simple = f'{{"inputs": "go", "parameters": {{"max_new_tokens": {args.tokens}}}}}'.encode()
    native = f'{{"text_input": "go", "max_new_tokens": {args.tokens}}}'.encode()
    results: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    try:
        repository = write_repository(work / "repository", args.interval_ms)
        if args.server_cpus:
            os.sched_setaffinity(0, args.server_cpus)
        with serve_with_reference(work / "serve", MODEL, repository) as serve:
            os.sched_setaffinity(0, args.load_cpus or everything)
            paths = {
                SERVE: (serve.url, "/invocations", simple),
                REFERENCE: (
                    f"http://{serve.triton_http}",
                    f"/v2/models/{MODEL}/generate_stream",
                    native,
                ),
            }
            for url, path, body in paths.values():  # warm-up
                warm = argparse.Namespace(**{**vars(args), "seconds": 1})
                measure(url, path, body, 8, warm)
            for streams in args.concurrency:
                for _ in range(args.rounds):
                    for name, (url, path, body) in paths.items():
                        result = measure(url, path, body, streams, args)
                        results.setdefault((name, streams), []).append(result)
                        print(
                            f"  {name:24} {streams:4d} streams {result[0]:9.0f} tokens/s  "
                            f"p99 gap {result[1]:7.2f} ms  first {result[2]:7.2f} ms",
                            flush=True,
                        )
    finally:
        os.sched_setaffinity(0, everything)
        shutil.rmtree(work, ignore_errors=True)
    report(results, args)


def report(
    results: dict[tuple[str, int], list[tuple[float, float, float]]], args: argparse.Namespace
) -> None:
    print(
        f"\n{MODEL}: {args.tokens} tokens per stream, {args.interval_ms:g} ms apart, "
        f"{args.rounds} x {args.seconds:g} s per path and level (medians)"
    )
    print(f"{'path':24} {'streams':>7} {'tokens/s':>10} {'p99 gap ms':>11} {'first ms':>9}")
    medians = {
        key: tuple(statistics.median(run[i] for run in runs) for i in range(3))
        for key, runs in results.items()
    }
    for (name, streams), (rate, gap, first) in medians.items():
        print(f"{name:24} {streams:7d} {rate:10.0f} {gap:11.2f} {first:9.2f}")
    for streams in args.concurrency:
        ours, theirs = medians[SERVE, streams], medians[REFERENCE, streams]
        rate, gap = ours[0] / theirs[0], ours[1] / theirs[1]
        print(
            f"{streams} streams: tokens/s serve / Triton {rate:.3f} (goal >= {THROUGHPUT_GOAL}: "
            f"{'met' if rate >= THROUGHPUT_GOAL else 'NOT met'}), p99 gap {gap:.3f} "
            f"(goal <= {GAP_GOAL}: {'met' if gap <= GAP_GOAL else 'NOT met'}); first token: "
            f"model {theirs[2]:.2f} ms, serve adds {ours[2] - theirs[2]:+.2f} ms"
        )


if __name__ == "__main__":
    main()
