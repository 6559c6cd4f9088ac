"""Benchmark: time to the first streamed chunk through serve, against Triton's own stream.

Two `serve`s run the streaming example (streaming_repository/text_generator,
a decoupled text-generation pipeline): one as shipped, one with
SAGEMAKER_TRITON_INFERENCE_TYPE=generate_stream (Triton's newer frontends'
behaviour). The same prompt is sent, one request at a time and taking turns
(the order rotated every round), to

- serve /invocations, a simple body (nginx -> the payload service -> Triton's
  generate_stream, answered as JSON Lines): the path the goal is about;
- serve in generate_stream mode, a generate-extension body (nginx -> Triton,
  server-sent events relayed as they come): nginx's share alone;
- Triton's generate_stream route itself, on the first serve's loopback port:
  the model's own first-token time, plus Triton's.

Each reports the time from sending the request to the first chunk of the
answer, and to its end; medians and the ratios to Triton's own are printed
(goal: first chunk within 10 % of Triton's own). Each request opens a new
connection, unless `--keep-alive` keeps one open per path (a caller that
reuses its connections pays no accept on either side).

Run: `.venv/bin/python build/bench/streaming.py [--requests 50] [--tokens 16] [--keep-alive]`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from load_generators import in_turn
from serve_under_test import REPO_ROOT, serve_with_reference

REPOSITORY = REPO_ROOT / "streaming_repository"
MODEL = "text_generator"
GOAL = 1.1
REFERENCE = "Triton generate_stream"


def first_and_last(
    connection: http.client.HTTPConnection, path: str, body: bytes, keep_alive: bool = False
) -> tuple[float, float, int]:
    """Seconds to the first chunk and to the end of one streamed answer, and its chunks."""
    try:
        started = time.perf_counter()
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        first = None
        chunks = 0
        while response.read1(65536):
            first = first or time.perf_counter() - started
            chunks += 1
        if response.status != 200 or first is None:
            raise SystemExit(f"{path} answered {response.status} with no stream")
        return first, time.perf_counter() - started, chunks
    finally:
        if not keep_alive:
            connection.close()  # the next request connects anew


def connection(url: str) -> http.client.HTTPConnection:
    host, port = url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50, help="per path")
    parser.add_argument("--tokens", type=int, default=16, help="max_new_tokens")
    parser.add_argument("--prompt", default="The quick brown fox")
    parser.add_argument("--keep-alive", action="store_true", help="one connection per path")
    args = parser.parse_args()
    if not (REPOSITORY / MODEL / "1" / "generator").is_dir():
        raise SystemExit("run build/examples/make_text_generator.py first (set-up does)")

    simple = json.dumps({"inputs": args.prompt, "parameters": {"max_new_tokens": args.tokens}})
    native = json.dumps({"text_input": args.prompt, "max_new_tokens": args.tokens})
    work = Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    try:
        with contextlib.ExitStack() as stack:
            serve = stack.enter_context(serve_with_reference(work / "infer", MODEL, REPOSITORY))
            relay = stack.enter_context(
                serve_with_reference(
                    work / "generate_stream",
                    MODEL,
                    REPOSITORY,
                    {"SAGEMAKER_TRITON_INFERENCE_TYPE": "generate_stream"},
                )
            )
            paths = {
                "serve /invocations": (connection(serve.url), "/invocations", simple.encode()),
                "serve, nginx alone": (connection(relay.url), "/invocations", native.encode()),
                REFERENCE: (
                    connection(serve.triton_http),
                    f"/v2/models/{MODEL}/generate_stream",
                    native.encode(),
                ),
            }
            results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in paths}
            for target in paths.values():  # warm-up
                for _ in range(3):
                    first_and_last(*target, args.keep_alive)
            for turn in range(args.requests):
                # The later requests of a round were measurably slower here, whichever path.
                for name, target in in_turn(list(paths.items()), turn):
                    results[name].append(first_and_last(*target, args.keep_alive))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    connections = "one kept-alive connection" if args.keep_alive else "a new connection each"
    print(
        f"\n{MODEL}, {args.tokens} new tokens, {args.requests} requests per path, "
        f"{connections} (medians)"
    )
    print(f"{'path':24} {'first chunk ms':>15} {'last chunk ms':>14} {'chunks':>7} {'/ ref':>7}")
    firsts = {name: statistics.median(r[0] for r in runs) * 1e3 for name, runs in results.items()}
    for name, runs in results.items():
        last = statistics.median(r[1] for r in runs) * 1e3
        chunks = statistics.median(r[2] for r in runs)
        ratio = firsts[name] / firsts[REFERENCE]
        print(f"{name:24} {firsts[name]:15.2f} {last:14.2f} {chunks:7.0f} {ratio:7.3f}")
    ours = firsts["serve /invocations"]
    verdict = "met" if ours / firsts[REFERENCE] <= GOAL else "NOT met"
    print(
        f"first chunk, serve / Triton: {ours / firsts[REFERENCE]:.3f} "
        f"({ours - firsts[REFERENCE]:+.2f} ms, of which nginx alone "
        f"{firsts['serve, nginx alone'] - firsts[REFERENCE]:+.2f} ms; goal <= {GOAL}: {verdict})"
    )


if __name__ == "__main__":
    main()
