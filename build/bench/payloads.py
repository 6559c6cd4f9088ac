"""Benchmark: simple JSON and CSV through the payload service against native v2 JSON.

One `serve` runs the bundled NCF example. wrk drives /invocations with the
same (user, item) pairs in three encodings, taking turns for several rounds:

- native: KServe v2 JSON, nginx -> Triton (the fast path);
- simple JSON: `{"inputs": [[user, item], ...]}`, adapted by the payload service,
  as `application/json` and as `application/json; format=simple` ("marked");
- CSV: one `user,item` line per pair, adapted by the payload service.

Medians and each encoding's throughput relative to native at the same batch
are printed (goal: >= 0.5). nginx tells a simple JSON body from a v2 one by
its first key, so neither takes a failed try in Triton; the marked variant
shows what that look at the body costs. Errors (non-2xx answers) must be zero.

Run: `.venv/bin/python build/bench/payloads.py [--batch 1,16] [--seconds 8]`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from load_generators import Measurement, ncf_body, require_wrk, run_wrk
from serve_under_test import EXAMPLES, serve_with_reference

GOAL = 0.5


def bodies(batch: int) -> dict[str, tuple[str, str]]:
    """Encoding -> (body, Content-Type) for `batch` NCF pairs, the same pairs in each."""
    native = json.loads(ncf_body(batch))
    users, items = (tensor["data"] for tensor in native["inputs"])
    pairs = [[u, i] for u, i in zip(users, items, strict=True)]
    return {
        "native v2 JSON": (json.dumps(native), "application/json"),
        "simple JSON": (json.dumps({"inputs": pairs}), "application/json"),
        # Marked as a simple shape by the caller: never tried as v2.
        "simple, marked": (json.dumps({"inputs": pairs}), "application/json; format=simple"),
        "CSV": ("".join(f"{u},{i}\n" for u, i in pairs), "text/csv"),
    }


def _variable(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not (sep and name):
        raise argparse.ArgumentTypeError(f"{item!r}: write NAME=VALUE")
    return name, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ncf_food")
    parser.add_argument("--batch", default="1,16", help="comma-separated pairs per request")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=8, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per encoding")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        type=_variable,
        metavar="NAME=VALUE",
        help="a variable for serve (repeatable), e.g. SAGEMAKER_TRITON_LOG_VERBOSE=true: "
        "the benchmark turns Triton's verbose log off unless told",
    )
    args = parser.parse_args()
    environment = dict(args.env)
    require_wrk()
    batches = [int(b) for b in args.batch.split(",")]

    work = Path(tempfile.mkdtemp(prefix="bench-payloads-"))
    try:
        with serve_with_reference(work, args.model, EXAMPLES, environment) as serve:
            url = f"{serve.url}/invocations"
            results: dict[tuple[int, str], list[Measurement]] = {}
            runs = []
            for batch in batches:
                for name, (body, content_type) in bodies(batch).items():
                    body_file = work / f"{batch}-{name.replace(' ', '_')}.body"
                    body_file.write_text(body)
                    runs.append((batch, name, body_file, content_type))
                    results[(batch, name)] = []
            for _, _, body_file, content_type in runs:  # warm-up
                run_wrk(url, body_file, args.connections, 2, content_type)
            for _ in range(args.rounds):
                for batch, name, body_file, content_type in runs:
                    measurement = run_wrk(
                        url, body_file, args.connections, args.seconds, content_type
                    )
                    results[(batch, name)].append(measurement)
        report(results, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(results: dict[tuple[int, str], list[Measurement]], args: argparse.Namespace) -> None:
    print(
        f"\nmodel {args.model}, {args.connections} connections, "
        f"{args.rounds} x {args.seconds:g} s per encoding (medians)"
    )
    print(
        f"{'batch':>5} {'encoding':16} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>7} {'/ native':>9}"
    )
    verdicts = []
    for (batch, name), runs in results.items():
        rps = statistics.median(r.requests_per_second for r in runs)
        native = statistics.median(
            r.requests_per_second for r in results[(batch, "native v2 JSON")]
        )
        ratio = rps / native
        errors = sum(r.errors for r in runs)
        print(
            f"{batch:5d} {name:16} {rps:9.0f} {statistics.median(r.p50_ms for r in runs):8.2f} "
            f"{statistics.median(r.p99_ms for r in runs):8.2f} {errors:7d} {ratio:9.3f}"
        )
        if name != "native v2 JSON":
            verdicts.append((batch, name, ratio, errors))
    for batch, name, ratio, errors in verdicts:
        met = "met" if ratio >= GOAL and errors == 0 else "NOT met"
        print(f"batch {batch}, {name}: {ratio:.2f}x native (goal >= {GOAL}x): {met}")


if __name__ == "__main__":
    main()
