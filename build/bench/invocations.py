"""Benchmark: /invocations through `serve` against Triton's own SageMaker frontend.

One `serve` runs the bundled NCF example; its Triton also opens Triton's own
SageMaker frontend on a second port (serve_under_test.py gives serve a
tritonserver script that adds the flags, which serve refuses in
SAGEMAKER_TRITON_ADDITIONAL_ARGS). Both paths therefore reach the very same model instances, and
the only difference measured is the front. wrk drives each path in turn,
alternating for several rounds, and the medians are compared, with the CPU
time the whole serving process tree (serve, nginx, Triton, the model's stub)
spent per request: a figure other load on the machine disturbs far less
than throughput. A breakdown per process (nginx, Triton, the stub, serve's
Python) shows where each path's cycles go.

A path of serve's own sends the same v2 JSON body as `application/octet-stream`,
as AWS's Triton notebooks and GPU multi-model benchmarks do (`--no-octet-stream`
leaves it out): nginx sends it to Triton as it sends `application/json`, so its
ratio to serve's JSON path should be 1 within the noise.

A third path, a bare nginx `proxy_pass` to the same Triton (build/bench/bare_proxy.py),
is the floor of any nginx front: serve / bare is what serve's features cost,
bare / Triton's frontend what the extra hop itself costs.

Triton's verbose log (SAGEMAKER_TRITON_LOG_VERBOSE, on in NVIDIA's image) costs
both paths alike but changes how much the front's share weighs: `--log off`,
`--log on`, or `--log both` (the default) runs the comparison with it off, then on.

On a small host, pin the servers and the load generator apart, as on the
instance: `--server-cpus 0,1 --load-cpus 2-5` runs serve, Triton, the bare nginx
on cores 0-1 and wrk on 2-5.

Run: `make bench` (or `.venv/bin/python build/bench/invocations.py --help`).
`build/bench/harness.py` runs the same comparison across a concurrency range,
with plots.

`--variant KEY=VALUE` (repeatable) starts a second `serve` with those
variables (its own Triton, same model) and adds it as a further path, taking
turns with the others: what a setting costs, measured side by side (for
example `--variant SERVE_METRICS_PORT=9300`, the front's access-log metrics).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from bare_proxy import bare_proxy
from load_generators import Measurement, ncf_body, require_wrk, run_wrk
from serve_under_test import EXAMPLES, process_tree_cpu_seconds_by_name, serve_with_reference

SERVE = "serve (nginx -> Triton HTTP)"
REFERENCE = "Triton's SageMaker frontend"
BARE = "bare nginx proxy_pass"
# The same v2 JSON body as application/octet-stream, as AWS's Triton notebooks and GPU
# multi-model benchmarks send it (serve reads it as v2 JSON, as Triton's frontend does).
OCTET_STREAM = "serve, v2 JSON as octet-stream"
# Content-Type of each path's requests; any other path sends application/json.
CONTENT_TYPES = {OCTET_STREAM: "application/octet-stream"}
GOAL = 0.97
# Process names (as /proc shows them, 15 characters at most) grouped for the breakdown.
GROUPS = (("nginx", "nginx"), ("tritonserver", "triton"), ("triton_python", "stub"))
LOG_SETTINGS = {"off": "0", "on": "1"}


def cpu_list(text: str) -> set[int]:
    """`0,1` or `2-5` or a mix, as taskset writes them."""
    cpus: set[int] = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ncf_food")
    parser.add_argument("--batch", type=int, default=1, help="user-item pairs per request")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=8, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per path")
    parser.add_argument("--repository", type=Path, default=EXAMPLES)
    parser.add_argument(
        "--log",
        choices=("off", "on", "both"),
        default="both",
        help="Triton's verbose log (SAGEMAKER_TRITON_LOG_VERBOSE) in the run; both: off, then on",
    )
    parser.add_argument(
        "--bare-proxy",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure a bare nginx proxy_pass to the same Triton too (the floor)",
    )
    parser.add_argument(
        "--octet-stream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure serve with the same body as application/octet-stream too",
    )
    parser.add_argument("--server-cpus", type=cpu_list, help="cores for serve/Triton, e.g. 0,1")
    parser.add_argument("--load-cpus", type=cpu_list, help="cores for wrk, e.g. 2-5")
    parser.add_argument("--wrk-threads", type=int, default=1)
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
    for log in ("off", "on") if args.log == "both" else (args.log,):
        run(args, log)


def run(args: argparse.Namespace, log: str) -> None:
    """One comparison with Triton's verbose log `log` (off/on); prints its report."""
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    body_file = work / "body.json"
    body_file.write_text(ncf_body(args.batch))
    env = {"SAGEMAKER_TRITON_LOG_VERBOSE": LOG_SETTINGS[log]}
    everything = os.sched_getaffinity(0)
    try:
        with contextlib.ExitStack() as stack:
            if args.server_cpus:
                # Children inherit it: serve, nginx, Triton, its stubs, the bare nginx.
                os.sched_setaffinity(0, args.server_cpus)
            serve = stack.enter_context(
                serve_with_reference(work, args.model, args.repository, env)
            )
            paths = {
                SERVE: f"{serve.url}/invocations",
                REFERENCE: f"{serve.reference_url}/invocations",
            }
            # What each path's CPU is read from: the process trees that serve it.
            roots: dict[str, list[int]] = {SERVE: [serve.pid], REFERENCE: [serve.pid]}
            if args.octet_stream:
                paths[OCTET_STREAM] = paths[SERVE]
                roots[OCTET_STREAM] = [serve.pid]
            if args.bare_proxy:
                url, pid = stack.enter_context(
                    bare_proxy(work / "bare", serve.triton_http, args.model)
                )
                paths[BARE] = f"{url}/invocations"
                roots[BARE] = [serve.pid, pid]
            if args.variant:
                variant_env = {**env, **dict(item.split("=", 1) for item in args.variant)}
                variant = stack.enter_context(
                    serve_with_reference(work / "variant", args.model, args.repository, variant_env)
                )
                name = f"serve + {' '.join(args.variant)}"
                paths[name] = f"{variant.url}/invocations"
                roots[name] = [variant.pid]
            # wrk runs where the servers do not.
            os.sched_setaffinity(0, args.load_cpus or everything)
            results, cpu = measure(paths, roots, body_file, args)
        report(results, args, cpu, log)
    finally:
        os.sched_setaffinity(0, everything)
        shutil.rmtree(work, ignore_errors=True)


def measure(
    paths: dict[str, str], roots: dict[str, list[int]], body_file: Path, args: argparse.Namespace
) -> tuple[dict[str, list[Measurement]], dict[str, list[dict[str, float]]]]:
    """Alternating rounds; per path its wrk results and CPU microseconds per request per group."""

    def cpu_now(name: str) -> Callable[[], dict[str, float]]:
        totals: dict[str, float] = {}
        for root in roots[name]:
            for process, seconds in process_tree_cpu_seconds_by_name(root).items():
                group = next((g for prefix, g in GROUPS if process.startswith(prefix)), "other")
                totals[group] = totals.get(group, 0.0) + seconds
        return totals

    results: dict[str, list[Measurement]] = {name: [] for name in paths}
    cpu: dict[str, list[dict[str, float]]] = {name: [] for name in paths}

    def content_type(name: str) -> dict[str, str]:
        return {"content_type": CONTENT_TYPES[name]} if name in CONTENT_TYPES else {}

    for name, url in paths.items():  # warm-up
        run_wrk(url, body_file, args.connections, 2, threads=args.wrk_threads, **content_type(name))
    for _ in range(args.rounds):
        for name, url in paths.items():
            before = cpu_now(name)
            result = run_wrk(
                url,
                body_file,
                args.connections,
                args.seconds,
                threads=args.wrk_threads,
                **content_type(name),
            )
            after = cpu_now(name)
            results[name].append(result)
            requests = max(1, result.requests)
            cpu[name].append(
                {group: (after[group] - before.get(group, 0.0)) / requests * 1e6 for group in after}
            )
    return results, cpu


def report(
    results: dict[str, list[Measurement]],
    args: argparse.Namespace,
    cpu: dict[str, list[dict[str, float]]] | None = None,
    log: str = "off",
) -> None:
    """Medians per path and the ratios; `cpu` (microseconds per request) adds columns."""
    server_cpus = getattr(args, "server_cpus", None)
    pinned = f", servers on cores {sorted(server_cpus)}" if server_cpus else ""
    print(
        f"\nmodel {args.model}, batch {args.batch}, {args.connections} connections, "
        f"Triton's verbose log {log}{pinned}, {args.rounds} x {args.seconds:g} s per path (medians)"
    )
    groups = sorted({group for runs in (cpu or {}).values() for run in runs for group in run})
    cpu_medians = {
        name: {g: statistics.median(run.get(g, 0.0) for run in runs) for g in groups}
        for name, runs in (cpu or {}).items()
    }
    cpu_header = "".join(f" {g + ' us':>9}" for g in groups)
    if cpu_medians:
        cpu_header += f" {'CPU us/req':>11}"
    print(f"{'path':32} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}{cpu_header}")
    medians = {}
    for name, runs in results.items():
        rps = statistics.median(r.requests_per_second for r in runs)
        p50 = statistics.median(r.p50_ms for r in runs)
        p99 = statistics.median(r.p99_ms for r in runs)
        errors = sum(r.errors for r in runs)
        medians[name] = (rps, p99)
        cells = ""
        if cpu_medians:
            per_group = cpu_medians[name]
            cells = "".join(f" {per_group[g]:9.0f}" for g in groups)
            cells += f" {sum(per_group.values()):11.0f}"
        print(f"{name:32} {rps:10.0f} {p50:8.2f} {p99:8.2f} {errors:7d}{cells}")
    # The first path is serve's, the second the reference (multi_model.py names them its way).
    ours, reference, *others = medians
    ours_rps, ours_p99 = medians[ours]
    ref_rps, ref_p99 = medians[reference]
    verdict = "met" if ours_rps / ref_rps >= GOAL else "NOT met"
    print(
        f"throughput ratio (serve / Triton's frontend): {ours_rps / ref_rps:.3f}  "
        f"(goal >= {GOAL}: {verdict})"
    )
    print(f"p99 latency ratio (serve / Triton's frontend): {ours_p99 / ref_p99:.3f}  (goal <= 1.1)")
    if BARE in medians:
        bare_rps, _ = medians[BARE]
        print(
            f"bare nginx proxy_pass / Triton's frontend: {bare_rps / ref_rps:.3f} (the floor of "
            f"an nginx hop); serve / bare nginx: {ours_rps / bare_rps:.3f}"
        )
    totals = {name: sum(groups.values()) for name, groups in cpu_medians.items()}
    if totals:
        print(
            f"CPU per request (serve / Triton's frontend): {totals[ours] / totals[reference]:.3f}"
        )
    for name in others:
        if name == BARE:
            continue
        variant_rps, variant_p99 = medians[name]
        cpu_ratio = f", CPU per request {totals[name] / totals[ours]:.3f}" if totals else ""
        print(
            f"{name} / serve: throughput {variant_rps / ours_rps:.3f}, p99 latency "
            f"{variant_p99 / ours_p99:.3f}{cpu_ratio}; "
            f"/ Triton's frontend: throughput {variant_rps / ref_rps:.3f}"
        )


if __name__ == "__main__":
    main()
