"""Benchmark: /invocations through `serve` against Triton's own SageMaker frontend.

One `serve` runs the bundled NCF example; its Triton is also told (through
SAGEMAKER_TRITON_ADDITIONAL_ARGS) to open Triton's own SageMaker frontend on
a second port. Both paths therefore reach the very same model instances, and
the only difference measured is the front. wrk drives each path in turn,
alternating for several rounds, and the medians are compared.

Run: `make bench` (or `.venv/bin/python build/bench/invocations.py --help`).
`build/bench/harness.py` runs the same comparison across a concurrency range,
with plots.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from load_generators import Measurement, ncf_body, require_wrk, run_wrk
from serve_under_test import EXAMPLES, serve_with_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ncf_food")
    parser.add_argument("--batch", type=int, default=1, help="user-item pairs per request")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=8, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per path")
    parser.add_argument("--repository", type=Path, default=EXAMPLES)
    args = parser.parse_args()
    require_wrk()

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    body_file = work / "body.json"
    body_file.write_text(ncf_body(args.batch))
    try:
        with serve_with_reference(work, args.model, args.repository) as serve:
            paths = {
                "serve (nginx -> Triton HTTP)": f"{serve.url}/invocations",
                "Triton's SageMaker frontend": f"{serve.reference_url}/invocations",
            }
            results: dict[str, list[Measurement]] = {name: [] for name in paths}
            for url in paths.values():  # warm-up
                run_wrk(url, body_file, args.connections, 2)
            for _ in range(args.rounds):
                for name, url in paths.items():
                    results[name].append(run_wrk(url, body_file, args.connections, args.seconds))
        report(results, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(results: dict[str, list[Measurement]], args: argparse.Namespace) -> None:
    print(
        f"\nmodel {args.model}, batch {args.batch}, {args.connections} connections, "
        f"{args.rounds} x {args.seconds:g} s per path (medians)"
    )
    print(f"{'path':32} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    medians = {}
    for name, runs in results.items():
        rps = statistics.median(r.requests_per_second for r in runs)
        p50 = statistics.median(r.p50_ms for r in runs)
        p99 = statistics.median(r.p99_ms for r in runs)
        errors = sum(r.errors for r in runs)
        medians[name] = (rps, p99)
        print(f"{name:32} {rps:10.0f} {p50:8.2f} {p99:8.2f} {errors:7d}")
    (ours_rps, ours_p99), (ref_rps, ref_p99) = medians.values()
    print(f"throughput ratio (serve / Triton's frontend): {ours_rps / ref_rps:.3f}  (goal >= 0.97)")
    print(f"p99 latency ratio (serve / Triton's frontend): {ours_p99 / ref_p99:.3f}  (goal <= 1.1)")


if __name__ == "__main__":
    main()
