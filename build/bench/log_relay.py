"""Benchmark: what relaying Triton's log costs `serve`, with the verbose log on.

SAGEMAKER_TRITON_LOG_VERBOSE is on by default (as in NVIDIA's image), and
Triton then writes about nine lines per request. `serve` relays them to its
stdout (serve/runtime/processes.py) from a thread of the same Python process as the
payload service. One `serve` runs the NCF example with the verbose log on,
wrk sends native v2 JSON, and the script prints throughput, the lines the log
gained, and the CPU time of `serve`'s own process (not nginx's, Triton's or
the model's) per request and per line.

Run: `.venv/bin/python build/bench/log_relay.py [--seconds 8] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from load_generators import ncf_body, require_wrk, run_wrk
from serve_under_test import EXAMPLES, process_cpu_seconds, serve_with_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=8, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    require_wrk()

    work = Path(tempfile.mkdtemp(prefix="bench-log-relay-"))
    rows = []
    try:
        verbose = {"SAGEMAKER_TRITON_LOG_VERBOSE": "true"}
        with serve_with_reference(work, "ncf_food", EXAMPLES, verbose) as serve:
            body = work / "body.json"
            body.write_text(ncf_body(1))
            url = f"{serve.url}/invocations"
            run_wrk(url, body, args.connections, 2)  # warm-up
            for _ in range(args.rounds):
                lines, cpu = _log_lines(serve.log), process_cpu_seconds(serve.pid)
                measured = run_wrk(url, body, args.connections, args.seconds)
                lines = _log_lines(serve.log) - lines
                cpu = process_cpu_seconds(serve.pid) - cpu
                requests = measured.requests
                rows.append((measured.requests_per_second, lines / requests, cpu, lines, requests))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nNCF example, Triton's verbose log on, {args.connections} connections (medians)")
    print(f"{'req/s':>8} {'log lines / request':>20} {'serve CPU us / request':>23} {'/ line':>7}")
    print(
        f"{statistics.median(r[0] for r in rows):8.0f} "
        f"{statistics.median(r[1] for r in rows):20.1f} "
        f"{statistics.median(r[2] / r[4] * 1e6 for r in rows):23.1f} "
        f"{statistics.median(r[2] / r[3] * 1e6 for r in rows):7.2f}"
    )


def _log_lines(log: Path) -> int:
    with log.open("rb") as stream:
        return sum(block.count(b"\n") for block in iter(lambda: stream.read(1 << 20), b""))


if __name__ == "__main__":
    main()
