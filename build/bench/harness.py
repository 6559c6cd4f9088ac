"""Benchmark harness: our front against Triton's own, across a concurrency range, with plots.

One command measures, in the same run and on the same Triton (the same model
instances):

- `serve`: /invocations through our front (nginx -> Triton's HTTP frontend), with wrk;
- `triton-sagemaker`: /invocations on Triton's own SageMaker frontend, with wrk;
- `triton-v2`: Triton's v2 infer route on its HTTP frontend, same body, with wrk;
- `perf_analyzer`: the same v2 route driven by NVIDIA's perf_analyzer (binary tensors).

Without --endpoint it starts `serve` on the bundled NCF example with Triton's
SageMaker frontend opened beside it (build/bench/serve_under_test.py). With
--endpoint it measures a running endpoint; --reference and --triton-http add
the other targets when that endpoint's Triton has them open.

For each concurrency, the targets take turns (for --rounds rounds) and the
medians are kept. It writes results.csv, throughput.png and latency.png
(p50 and p99) into --out and prints the ratio table (serve / each other
target) that the other benchmarks cite.

Run: `.venv/bin/python build/bench/harness.py [--concurrency 1,4,16,64] [--seconds 5]`;
CI runs it with `--concurrency 1,4 --seconds 1`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from load_generators import (
    JSON,
    Measurement,
    ncf_payload,
    ncf_perf_analyzer_data,
    perf_analyzer_binary,
    require_wrk,
    run_perf_analyzer,
    run_wrk,
)
from serve_under_test import EXAMPLES, REPO_ROOT, RunningServe, serve_with_reference

TARGETS = ("serve", "triton-sagemaker", "triton-v2", "perf_analyzer")
CSV_FIELDS = (
    "target",
    "tool",
    "url",
    "payload",
    "batch",
    "concurrency",
    "rounds",
    "requests_per_second",
    "p50_ms",
    "p99_ms",
    "errors",
)


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    tool: str
    url: str
    measure: Callable[[int, float], Measurement]


@dataclasses.dataclass(frozen=True)
class Row:
    target: Target
    concurrency: int
    runs: tuple[Measurement, ...]

    @property
    def median(self) -> Measurement:
        return Measurement(
            statistics.median(r.requests_per_second for r in self.runs),
            statistics.median(r.p50_ms for r in self.runs),
            statistics.median(r.p99_ms for r in self.runs),
            sum(r.errors for r in self.runs),
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", help="a running endpoint's URL (default: start serve)")
    parser.add_argument("--reference", help="Triton's SageMaker frontend URL, with --endpoint")
    parser.add_argument("--triton-http", help="host:port of Triton's v2 HTTP, with --endpoint")
    parser.add_argument("--model", default="ncf_food", help="the model /invocations runs")
    parser.add_argument("--repository", type=Path, default=EXAMPLES)
    parser.add_argument("--batch", type=int, default=1, help="user-item pairs per request")
    parser.add_argument("--payload", choices=("json", "binary"), default="json")
    parser.add_argument("--concurrency", default="1,4,16,64", help="comma-separated levels")
    parser.add_argument("--seconds", type=float, default=5, help="per run")
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs per level")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated")
    parser.add_argument(
        "--serve-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the serve this harness starts (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / ".bench" / "harness")
    args = parser.parse_args(argv)
    args.concurrency = [int(level) for level in args.concurrency.split(",")]
    args.targets = [name.strip() for name in args.targets.split(",") if name.strip()]
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {', '.join(TARGETS)}")
    if any("=" not in item for item in args.serve_env):
        parser.error("--serve-env takes KEY=VALUE")
    return args


@contextmanager
def endpoint(args: argparse.Namespace, work: Path) -> Iterator[RunningServe]:
    if args.endpoint:
        yield RunningServe(
            url=args.endpoint.rstrip("/"),
            reference_url=(args.reference or "").rstrip("/"),
            triton_http=args.triton_http or "",
            log=Path(),
        )
        return
    extra_env = dict(item.split("=", 1) for item in args.serve_env)
    with serve_with_reference(work, args.model, args.repository, extra_env) as running:
        yield running


def build_targets(args: argparse.Namespace, running: RunningServe, work: Path) -> list[Target]:
    """The requested targets this endpoint has; each measures one (concurrency, seconds)."""
    payload = ncf_payload(args.batch, args.payload)
    body = work / "body.bin"
    body.write_bytes(payload.body)

    def wrk(url: str, content_type: str, headers: dict[str, str]) -> Callable:
        return lambda c, s: run_wrk(url, body, c, s, content_type, headers=headers)

    v2_url = f"http://{running.triton_http}/v2/models/{args.model}/infer"
    # Triton's own spelling of binary+json: the header length in a header of its own.
    v2_type, v2_headers = payload.content_type, {}
    if payload.content_type != JSON:
        v2_type = "application/octet-stream"
        v2_headers = {"Inference-Header-Content-Length": payload.content_type.rsplit("=", 1)[1]}
    targets = []
    for name in args.targets:
        if name == "serve":
            url = f"{running.url}/invocations"
            targets.append(Target(name, "wrk", url, wrk(url, payload.content_type, {})))
        elif name == "triton-sagemaker" and running.reference_url:
            url = f"{running.reference_url}/invocations"
            targets.append(Target(name, "wrk", url, wrk(url, payload.content_type, {})))
        elif name == "triton-v2" and running.triton_http:
            targets.append(Target(name, "wrk", v2_url, wrk(v2_url, v2_type, v2_headers)))
        elif name == "perf_analyzer" and running.triton_http:
            perf_analyzer_binary()
            data = ncf_perf_analyzer_data(work / "perf_analyzer_data.json")
            triton_http = running.triton_http

            def perf_analyzer(c: int, s: float, data: Path = data, server: str = triton_http):
                return run_perf_analyzer(server, args.model, c, s, args.batch, data, work)

            targets.append(Target(name, "perf_analyzer", v2_url, perf_analyzer))
        else:
            print(f"skipping {name}: this endpoint has no URL for it (--reference, --triton-http)")
    return targets


def measure(targets: list[Target], args: argparse.Namespace) -> list[Row]:
    """Each concurrency in turn; at each, the targets alternate for --rounds rounds."""
    for target in targets:  # warm-up: connections, Triton's and nginx's buffers
        target.measure(min(16, max(args.concurrency)), 1)
    runs: dict[tuple[str, int], list[Measurement]] = {}
    for concurrency in args.concurrency:
        for _ in range(args.rounds):
            for target in targets:
                result = target.measure(concurrency, args.seconds)
                runs.setdefault((target.name, concurrency), []).append(result)
                print(
                    f"  {target.name:18} c={concurrency:<4} {result.requests_per_second:9.0f} req/s"
                    f"  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms",
                    flush=True,
                )
    return [
        Row(target, concurrency, tuple(runs[target.name, concurrency]))
        for target in targets
        for concurrency in args.concurrency
    ]


def write_csv(rows: list[Row], args: argparse.Namespace, path: Path) -> None:
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            median = row.median
            writer.writerow(
                {
                    "target": row.target.name,
                    "tool": row.target.tool,
                    "url": row.target.url,
                    "payload": "binary" if row.target.tool == "perf_analyzer" else args.payload,
                    "batch": args.batch,
                    "concurrency": row.concurrency,
                    "rounds": len(row.runs),
                    "requests_per_second": f"{median.requests_per_second:.1f}",
                    "p50_ms": f"{median.p50_ms:.3f}",
                    "p99_ms": f"{median.p99_ms:.3f}",
                    "errors": median.errors,
                }
            )


def plot(rows: list[Row], args: argparse.Namespace, out: Path) -> list[Path]:
    """throughput.png and latency.png (p50 and p99), against concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from matplotlib.ticker import ScalarFormatter

    by_target: dict[str, list[Row]] = {}
    for row in rows:
        by_target.setdefault(row.target.name, []).append(row)
    title = f"{args.model}, batch {args.batch}, {args.payload} payload"

    figure, axis = pyplot.subplots(figsize=(7, 4.5))
    for name, series in by_target.items():
        axis.plot(
            [r.concurrency for r in series],
            [r.median.requests_per_second for r in series],
            marker="o",
            label=name,
        )
    _concurrency_axis(axis, args.concurrency)
    axis.set_ylabel("requests / s")
    axis.set_ylim(bottom=0)
    axis.set_title(f"Throughput: {title}")
    axis.legend()
    figure.tight_layout()
    throughput = out / "throughput.png"
    figure.savefig(throughput, dpi=110)
    pyplot.close(figure)

    figure, axes = pyplot.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for axis, (field, label) in zip(axes, (("p50_ms", "p50"), ("p99_ms", "p99")), strict=True):
        for name, series in by_target.items():
            axis.plot(
                [r.concurrency for r in series],
                [getattr(r.median, field) for r in series],
                marker="o",
                label=name,
            )
        _concurrency_axis(axis, args.concurrency)
        axis.set_yscale("log")
        axis.yaxis.set_major_formatter(ScalarFormatter())
        axis.set_title(f"{label} latency")
        axis.set_ylabel("ms")
        axis.legend()
    figure.suptitle(f"Latency: {title}")
    figure.tight_layout()
    latency = out / "latency.png"
    figure.savefig(latency, dpi=110)
    pyplot.close(figure)
    return [throughput, latency]


def _concurrency_axis(axis: object, levels: list[int]) -> None:
    axis.set_xscale("log", base=2)
    axis.set_xticks(levels, [str(level) for level in levels])
    axis.set_xlabel("concurrent requests")
    axis.grid(True, alpha=0.3)


def print_ratios(rows: list[Row]) -> None:
    """serve's figures over each other target's, per concurrency."""
    medians = {(row.target.name, row.concurrency): row.median for row in rows}
    others = [name for name in dict.fromkeys(row.target.name for row in rows) if name != "serve"]
    levels = sorted({row.concurrency for row in rows})
    print(f"\n{'target':18} {'conc':>5} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for (name, concurrency), m in medians.items():
        print(
            f"{name:18} {concurrency:5d} {m.requests_per_second:10.0f} {m.p50_ms:8.2f} "
            f"{m.p99_ms:8.2f} {m.errors:7d}"
        )
    if ("serve", levels[0]) not in medians or not others:
        return
    print("\nratios, serve / target (throughput >= 1 and latency <= 1 favour serve)")
    print(f"{'target':18} {'conc':>5} {'req/s':>8} {'p50':>8} {'p99':>8}")
    for name in others:
        for concurrency in levels:
            ours, theirs = medians["serve", concurrency], medians[name, concurrency]
            print(
                f"{name:18} {concurrency:5d} "
                f"{ours.requests_per_second / theirs.requests_per_second:8.3f} "
                f"{ours.p50_ms / theirs.p50_ms:8.3f} {ours.p99_ms / theirs.p99_ms:8.3f}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    require_wrk()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-harness-"))
    try:
        with endpoint(args, work) as running:
            targets = build_targets(args, running, work)
            print(
                f"model {args.model}, batch {args.batch}, {args.payload} payload, "
                f"concurrency {args.concurrency}, {args.rounds} x {args.seconds:g} s per point"
            )
            rows = measure(targets, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    csv_path = args.out / "results.csv"
    write_csv(rows, args, csv_path)
    images = plot(rows, args, args.out)
    print_ratios(rows)
    print(f"\nwrote {csv_path}, {', '.join(str(image) for image in images)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
