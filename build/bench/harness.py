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
CI runs it with `--concurrency 1,4 --seconds 1`. `--from-csv results.csv` plots
and prints an earlier run's results (one made on a machine without matplotlib,
say) without measuring anything.
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
from run_stamp import read_stamp, run_stamp, write_stamp
from serve_under_test import EXAMPLES, REPO_ROOT, RunningServe, serve_with_reference

TARGETS = ("serve", "triton-sagemaker", "triton-v2", "perf_analyzer")
CSV_FIELDS = (
    "model",
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


@dataclasses.dataclass(frozen=True)
class Point:
    """One target at one concurrency: the medians over its rounds, as the CSV holds them."""

    model: str
    target: str
    tool: str
    url: str
    payload: str
    batch: int
    concurrency: int
    rounds: int
    median: Measurement


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
    parser.add_argument(
        "--from-csv",
        type=Path,
        help="plot and print the ratios of an earlier run's results.csv (measures nothing)",
    )
    parser.add_argument(
        "--stamp",
        help="the machine, commit and date the plots name (default: this run's; with "
        "--from-csv, the run.txt beside the CSV)",
    )
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


def points_of(rows: list[Row], args: argparse.Namespace) -> list[Point]:
    return [
        Point(
            model=args.model,
            target=row.target.name,
            tool=row.target.tool,
            url=row.target.url,
            # perf_analyzer sends binary tensors whatever --payload says.
            payload="binary" if row.target.tool == "perf_analyzer" else args.payload,
            batch=args.batch,
            concurrency=row.concurrency,
            rounds=len(row.runs),
            median=row.median,
        )
        for row in rows
    ]


def write_csv(points: list[Point], path: Path) -> None:
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for point in points:
            writer.writerow(
                {
                    "model": point.model,
                    "target": point.target,
                    "tool": point.tool,
                    "url": point.url,
                    "payload": point.payload,
                    "batch": point.batch,
                    "concurrency": point.concurrency,
                    "rounds": point.rounds,
                    "requests_per_second": f"{point.median.requests_per_second:.1f}",
                    "p50_ms": f"{point.median.p50_ms:.3f}",
                    "p99_ms": f"{point.median.p99_ms:.3f}",
                    "errors": point.median.errors,
                }
            )


def read_csv(path: Path) -> list[Point]:
    with path.open(newline="") as stream:
        return [
            Point(
                model=row["model"],
                target=row["target"],
                tool=row["tool"],
                url=row["url"],
                payload=row["payload"],
                batch=int(row["batch"]),
                concurrency=int(row["concurrency"]),
                rounds=int(row["rounds"]),
                median=Measurement(
                    float(row["requests_per_second"]),
                    float(row["p50_ms"]),
                    float(row["p99_ms"]),
                    int(row["errors"]),
                ),
            )
            for row in csv.DictReader(stream)
        ]


def plot(points: list[Point], out: Path, stamp: str) -> list[Path]:
    """throughput.png and latency.png (p50 and p99), against concurrency, each naming
    the machine, commit and date of the run (`stamp`) under the axes and in its metadata."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    by_target: dict[str, list[Point]] = {}
    for point in points:
        by_target.setdefault(point.target, []).append(point)
    levels = sorted({point.concurrency for point in points})
    first = points[0]
    title = f"{first.model}, batch {first.batch}, {first.payload} payload"

    figure, axis = pyplot.subplots(figsize=(7, 4.5))
    for name, series in by_target.items():
        axis.plot(
            [p.concurrency for p in series],
            [p.median.requests_per_second for p in series],
            marker="o",
            label=name,
        )
    _concurrency_axis(axis, levels)
    axis.set_ylabel("requests / s")
    axis.set_ylim(bottom=0)
    axis.set_title(f"Throughput: {title}")
    axis.legend()
    figure.text(0.01, 0.01, stamp, fontsize=7, color="0.35")
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    throughput = out / "throughput.png"
    figure.savefig(throughput, dpi=110, metadata={"Description": stamp})
    pyplot.close(figure)

    figure, axes = pyplot.subplots(1, 2, figsize=(11, 4.5))
    for axis, (field, label) in zip(axes, (("p50_ms", "p50"), ("p99_ms", "p99")), strict=True):
        for name, series in by_target.items():
            axis.plot(
                [p.concurrency for p in series],
                [getattr(p.median, field) for p in series],
                marker="o",
                label=name,
            )
        _concurrency_axis(axis, levels)
        axis.set_ylim(bottom=0)
        axis.set_title(f"{label} latency")
        axis.set_ylabel("ms")
        axis.legend()
    figure.suptitle(f"Latency: {title}")
    figure.text(0.01, 0.01, stamp, fontsize=7, color="0.35")
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    latency = out / "latency.png"
    figure.savefig(latency, dpi=110, metadata={"Description": stamp})
    pyplot.close(figure)
    return [throughput, latency]


def _concurrency_axis(axis: object, levels: list[int]) -> None:
    axis.set_xscale("log", base=2)
    axis.set_xticks(levels, [str(level) for level in levels])
    axis.set_xlabel("concurrent requests")
    axis.grid(True, alpha=0.3)


def print_ratios(points: list[Point]) -> None:
    """serve's figures over each other target's, per concurrency."""
    medians = {(point.target, point.concurrency): point.median for point in points}
    others = [name for name in dict.fromkeys(point.target for point in points) if name != "serve"]
    levels = sorted({point.concurrency for point in points})
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
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_csv:
        points = read_csv(args.from_csv)
        stamp = args.stamp or read_stamp(args.from_csv.parent) or "machine, commit and date unknown"
    else:
        stamp = args.stamp or run_stamp()
        require_wrk()
        work = Path(tempfile.mkdtemp(prefix="bench-harness-"))
        try:
            with endpoint(args, work) as running:
                targets = build_targets(args, running, work)
                print(
                    f"model {args.model}, batch {args.batch}, {args.payload} payload, "
                    f"concurrency {args.concurrency}, {args.rounds} x {args.seconds:g} s per point"
                )
                points = points_of(measure(targets, args), args)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        write_csv(points, args.out / "results.csv")
    if args.stamp or not args.from_csv:
        write_stamp(args.out, stamp)
    images = plot(points, args.out, stamp)
    print_ratios(points)
    written = [*([] if args.from_csv else [args.out / "results.csv"]), *images]
    print(f"run: {stamp}")
    print(f"\nwrote {', '.join(str(path) for path in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
