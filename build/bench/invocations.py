"""Benchmark: /invocations through `serve` against Triton's own SageMaker frontend.

One `serve` runs the bundled NCF example; its Triton is also told (through
SAGEMAKER_TRITON_ADDITIONAL_ARGS) to open Triton's own SageMaker frontend on
a second port. Both paths therefore reach the very same model instances, and
the only difference measured is the front. wrk drives each path in turn,
alternating for several rounds, and the medians are compared.

Run: `make bench` (or `.venv/bin/python build/bench/invocations.py --help`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "model_repository"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclasses.dataclass(frozen=True)
class Measurement:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ncf_body(batch: int) -> str:
    users = [i % 1000 for i in range(batch)]
    items = [(7 * i) % 500 for i in range(batch)]
    return json.dumps(
        {
            "inputs": [
                {"name": "user_id", "shape": [batch, 1], "datatype": "INT64", "data": users},
                {"name": "item_id", "shape": [batch, 1], "datatype": "INT64", "data": items},
            ]
        }
    )


def run_wrk(url: str, body_file: Path, connections: int, seconds: int) -> Measurement:
    """One wrk run; wrk's Lua script posts the same JSON body on every request."""
    script = body_file.with_suffix(".lua")
    script.write_text(
        "wrk.method = 'POST'\n"
        "wrk.headers['Content-Type'] = 'application/json'\n"
        f"local f = io.open('{body_file}', 'rb'); wrk.body = f:read('*a'); f:close()\n"
        "function done(summary, latency, requests)\n"
        "  io.write(string.format('ERRORS %d\\n', summary.errors.status + summary.errors.connect"
        " + summary.errors.read + summary.errors.write + summary.errors.timeout))\n"
        "end\n"
    )
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    p50 = _latency(output, "50%")
    p99 = _latency(output, "99%")
    errors = int(re.search(r"ERRORS (\d+)", output).group(1))
    return Measurement(rps, p50, p99, errors)


def _latency(output: str, percentile: str) -> float:
    match = re.search(rf"^\s+{re.escape(percentile)}\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    return float(match.group(1)) * _UNITS[match.group(2)]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"serve exited with {process.returncode} before becoming ready")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("serve did not become ready in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ncf_food")
    parser.add_argument("--batch", type=int, default=1, help="user-item pairs per request")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=8, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per path")
    parser.add_argument("--repository", type=Path, default=EXAMPLES)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: run `make setup` (it installs Debian's wrk)")

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    (work / "opt_ml").mkdir()
    (work / "opt_ml" / "model").symlink_to(args.repository.resolve())
    body_file = work / "body.json"
    body_file.write_text(ncf_body(args.batch))
    port, reference_port = free_port(), free_port()
    env = dict(
        os.environ,
        OPT_ML=str(work / "opt_ml"),
        SAGEMAKER_BIND_TO_PORT=str(port),
        SAGEMAKER_TRITON_DEFAULT_MODEL_NAME=args.model,
        SAGEMAKER_TRITON_LOG_VERBOSE="0",
        SAGEMAKER_TRITON_ADDITIONAL_ARGS=(
            f"--allow-sagemaker=true --sagemaker-port={reference_port}"
        ),
    )
    log = (work / "serve.log").open("w")
    serve = subprocess.Popen(
        [str(Path(sys.executable).parent / "serve")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    paths = {
        "serve (nginx -> Triton HTTP)": f"http://127.0.0.1:{port}/invocations",
        "Triton's SageMaker frontend": f"http://127.0.0.1:{reference_port}/invocations",
    }
    try:
        wait_ready(f"http://127.0.0.1:{port}", serve)
        results: dict[str, list[Measurement]] = {name: [] for name in paths}
        for url in paths.values():  # warm-up
            run_wrk(url, body_file, args.connections, 2)
        for _ in range(args.rounds):
            for name, url in paths.items():
                results[name].append(run_wrk(url, body_file, args.connections, args.seconds))
        report(results, args)
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(60)
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
