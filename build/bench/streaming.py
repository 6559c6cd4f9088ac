"""Benchmark: time to the first streamed chunk through serve, against Triton's own stream.

One `serve` runs the streaming example (streaming_repository/text_generator,
a decoupled text-generation pipeline). The same prompt is sent, one request
at a time and taking turns (the order swapped every round), to

- /invocations (nginx -> the payload service -> Triton's generate_stream,
  answered as JSON Lines), and
- Triton's generate_stream route itself, on its loopback port: the model's
  own first-token time, plus Triton's.

Both report the time from sending the request to the first chunk of the
answer, and to its end; medians and the ratio are printed (goal: first
chunk within 10 % of Triton's own).

Run: `.venv/bin/python build/bench/streaming.py [--requests 50] [--tokens 16]`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from serve_under_test import REPO_ROOT, serve_with_reference

REPOSITORY = REPO_ROOT / "streaming_repository"
GOAL = 1.1


def first_and_last(host: str, port: int, path: str, body: bytes) -> tuple[float, float, int]:
    """Seconds to the first chunk and to the end of one streamed answer, and its chunks."""
    connection = http.client.HTTPConnection(host, port, timeout=60)
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
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50, help="per path")
    parser.add_argument("--tokens", type=int, default=16, help="max_new_tokens")
    parser.add_argument("--prompt", default="The quick brown fox")
    args = parser.parse_args()
    if not (REPOSITORY / "text_generator" / "1" / "generator").is_dir():
        raise SystemExit("run build/examples/make_text_generator.py first (set-up does)")

    work = Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    try:
        with serve_with_reference(work, "text_generator", REPOSITORY) as serve:
            host, port = serve.url.removeprefix("http://").split(":")
            triton_host, triton_port = serve.triton_http.split(":")
            simple = json.dumps(
                {"inputs": args.prompt, "parameters": {"max_new_tokens": args.tokens}}
            ).encode()
            native = json.dumps({"text_input": args.prompt, "max_new_tokens": args.tokens}).encode()
            paths = {
                "serve /invocations": (host, int(port), "/invocations", simple),
                "Triton generate_stream": (
                    triton_host,
                    int(triton_port),
                    "/v2/models/text_generator/generate_stream",
                    native,
                ),
            }
            results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in paths}
            for target in paths.values():  # warm-up
                for _ in range(3):
                    first_and_last(*target)
            for turn in range(args.requests):
                # Each path follows the other half of the time: the second request
                # of a pair was measurably slower here, whichever path it was.
                order = list(paths.items())
                for name, target in order if turn % 2 == 0 else reversed(order):
                    results[name].append(first_and_last(*target))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\ntext_generator, {args.tokens} new tokens, {args.requests} requests per path (medians)"
    )
    print(f"{'path':24} {'first chunk ms':>15} {'last chunk ms':>14} {'chunks':>7}")
    medians = {}
    for name, runs in results.items():
        first = statistics.median(r[0] for r in runs) * 1e3
        last = statistics.median(r[1] for r in runs) * 1e3
        medians[name] = first
        print(f"{name:24} {first:15.2f} {last:14.2f} {statistics.median(r[2] for r in runs):7.0f}")
    ours, triton = medians.values()
    verdict = "met" if ours / triton <= GOAL else "NOT met"
    print(
        f"first chunk, serve / Triton: {ours / triton:.3f} ({ours - triton:+.2f} ms; "
        f"goal <= {GOAL}: {verdict})"
    )


if __name__ == "__main__":
    main()
