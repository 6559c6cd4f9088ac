"""Benchmark: /invocations through `serve` against Triton's own SageMaker frontend.

One `serve` runs the bundled NCF example; its Triton also opens Triton's own
SageMaker frontend on a second port (serve_under_test.py gives serve a
tritonserver script that adds the flags, which serve refuses in
SAGEMAKER_TRITON_ADDITIONAL_ARGS). Both paths therefore reach the very same model instances, and
the only difference measured is the front. wrk drives each path in turn,
alternating for several rounds, and the medians are compared, with the CPU
time the whole serving process tree (serve, nginx, Triton, the model's stub)
spent per request: a figure other load on the machine disturbs far less
than throughput.

Run: `make bench` (or `.venv/bin/python build/bench/invocations.py --help`).
`build/bench/harness.py` runs the same comparison across a concurrency range,
with plots.

`--variant KEY=VALUE` (repeatable) starts a second `serve` with those
variables (its own Triton, same model) and adds it as a third path, taking
turns with the others: what a setting costs, measured side by side (for
example `--variant SERVE_METRICS_PORT=9300`, the front's access-log metrics).
"""

from __future__ import annotations

import argparse
import contextlib
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
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment of a second serve measured beside the first (repeatable)",
    )
    args = parser.parse_args()
    if any("=" not in item for item in args.variant):
        parser.error("--variant takes KEY=VALUE")
    require_wrk()

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    body_file = work / "body.json"
    body_file.write_text(ncf_body(args.batch))
    try:
        with contextlib.ExitStack() as stack:
            serve = stack.enter_context(serve_with_reference(work, args.model, args.repository))
            paths = {
                "serve (nginx -> Triton HTTP)": f"{serve.url}/invocations",
                "Triton's SageMaker frontend": f"{serve.reference_url}/invocations",
            }
            if args.variant:
                variant_env = dict(item.split("=", 1) for item in args.variant)
                variant = stack.enter_context(
                    serve_with_reference(work / "variant", args.model, args.repository, variant_env)
                )
                paths[f"serve + {' '.join(args.variant)}"] = f"{variant.url}/invocations"
            trees = {name: serve for name in paths}
            if args.variant:
                trees[list(paths)[-1]] = variant
            results: dict[str, list[Measurement]] = {name: [] for name in paths}
            cpu: dict[str, list[float]] = {name: [] for name in paths}
            for url in paths.values():  # warm-up
                run_wrk(url, body_file, args.connections, 2)
            for _ in range(args.rounds):
                for name, url in paths.items():
                    before = trees[name].cpu_seconds()
                    result = run_wrk(url, body_file, args.connections, args.seconds)
                    used = trees[name].cpu_seconds() - before
                    results[name].append(result)
                    cpu[name].append(used / max(1, result.requests) * 1e6)
        report(results, args, cpu)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(
    results: dict[str, list[Measurement]],
    args: argparse.Namespace,
    cpu: dict[str, list[float]] | None = None,
) -> None:
    """Medians per path and the ratios; `cpu` (microseconds per request) adds a column."""
    print(
        f"\nmodel {args.model}, batch {args.batch}, {args.connections} connections, "
        f"{args.rounds} x {args.seconds:g} s per path (medians)"
    )
    cpu_medians = {name: statistics.median(values) for name, values in (cpu or {}).items()}
    cpu_header = f" {'CPU us/req':>11}" if cpu_medians else ""
    print(f"{'path':32} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}{cpu_header}")
    medians = {}
    for name, runs in results.items():
        rps = statistics.median(r.requests_per_second for r in runs)
        p50 = statistics.median(r.p50_ms for r in runs)
        p99 = statistics.median(r.p99_ms for r in runs)
        errors = sum(r.errors for r in runs)
        medians[name] = (rps, p99)
        cpu_cell = f" {cpu_medians[name]:11.0f}" if cpu_medians else ""
        print(f"{name:32} {rps:10.0f} {p50:8.2f} {p99:8.2f} {errors:7d}{cpu_cell}")
    (ours_rps, ours_p99), (ref_rps, ref_p99), *variants = medians.values()
    print(f"throughput ratio (serve / Triton's frontend): {ours_rps / ref_rps:.3f}  (goal >= 0.97)")
    print(f"p99 latency ratio (serve / Triton's frontend): {ours_p99 / ref_p99:.3f}  (goal <= 1.1)")
    if not cpu_medians:
        return
    ours_cpu, ref_cpu, *variant_cpus = cpu_medians.values()
    print(f"CPU per request (serve / Triton's frontend): {ours_cpu / ref_cpu:.3f}")
    for (variant_rps, variant_p99), variant_cpu in zip(variants, variant_cpus, strict=True):
        print(
            f"variant / serve: throughput {variant_rps / ours_rps:.3f}, p99 latency "
            f"{variant_p99 / ours_p99:.3f}, CPU per request {variant_cpu / ours_cpu:.3f}; "
            f"variant / Triton's frontend: throughput {variant_rps / ref_rps:.3f}"
        )


if __name__ == "__main__":
    main()
