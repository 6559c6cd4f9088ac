"""Load generators the benchmarks share: wrk for SageMaker routes, perf_analyzer for v2.

wrk posts one fixed body with a Lua script (method, body, Content-Type);
perf_analyzer speaks Triton's v2 HTTP protocol only, so it measures Triton's
own HTTP frontend, never the SageMaker routes. Both report requests per
second and latency percentiles as a `Measurement`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeVar

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
JSON = "application/json"
BINARY_JSON = "application/vnd.sagemaker-triton.binary+json;json-header-size={size}"

T = TypeVar("T")


def in_turn(paths: Sequence[T], turn: int) -> list[T]:
    """The order of round `turn`: `paths` rotated by it, so that over the rounds each path
    takes each place equally often (the later runs of a round can come out slower,
    whichever path)."""
    start = turn % len(paths)
    return [*paths[start:], *paths[:start]]


@dataclasses.dataclass(frozen=True)
class Measurement:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    # Requests completed in the run (wrk's count; perf_analyzer's rate x time).
    requests: int = 0


@dataclasses.dataclass(frozen=True)
class Payload:
    """One request body and its Content-Type."""

    body: bytes
    content_type: str


def _ncf_ids(batch: int) -> tuple[list[int], list[int]]:
    return [i % 1000 for i in range(batch)], [(7 * i) % 500 for i in range(batch)]


def ncf_body(batch: int) -> str:
    """A KServe v2 JSON request for the NCF examples: `batch` (user, item) pairs."""
    users, items = _ncf_ids(batch)
    return json.dumps(
        {
            "inputs": [
                {"name": "user_id", "shape": [batch, 1], "datatype": "INT64", "data": users},
                {"name": "item_id", "shape": [batch, 1], "datatype": "INT64", "data": items},
            ]
        }
    )


def ncf_payload(batch: int, kind: str = "json") -> Payload:
    """The NCF request as v2 JSON or as Triton's binary+json framing (binary outputs too)."""
    if kind == "json":
        return Payload(ncf_body(batch).encode(), JSON)
    if kind != "binary":
        raise ValueError(f"unknown payload kind {kind!r}; use json or binary")
    users, items = _ncf_ids(batch)
    tensors = {"user_id": users, "item_id": items}
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": [batch, 1],
                    "datatype": "INT64",
                    "parameters": {"binary_data_size": 8 * batch},
                }
                for name in tensors
            ],
            "outputs": [{"name": "score", "parameters": {"binary_data": True}}],
        }
    ).encode()
    data = b"".join(struct.pack(f"<{batch}q", *values) for values in tensors.values())
    return Payload(header + data, BINARY_JSON.format(size=len(header)))


def ncf_perf_analyzer_data(path: Path, samples: int = 16) -> Path:
    """perf_analyzer's --input-data file: `samples` (user, item) pairs, one per request."""
    users, items = _ncf_ids(samples)
    path.write_text(
        json.dumps(
            {"data": [{"user_id": [u], "item_id": [i]} for u, i in zip(users, items, strict=True)]}
        )
    )
    return path


def run_wrk(
    url: str,
    body_file: Path,
    connections: int,
    seconds: float,
    content_type: str = JSON,
    threads: int = 1,
    headers: Mapping[str, str] | None = None,
    timeout_s: int = 2,
) -> Measurement:
    """One wrk run; wrk's Lua script posts the same body on every request.

    A request slower than `timeout_s` (wrk's own default, 2 s) counts as an
    error and not in the latencies: raise it for models that are slow on purpose.
    """
    script = body_file.with_suffix(".lua")
    extra_headers = "".join(
        f"wrk.headers['{name}'] = '{value}'\n" for name, value in (headers or {}).items()
    )
    script.write_text(
        "wrk.method = 'POST'\n"
        f"wrk.headers['Content-Type'] = '{content_type}'\n"
        f"{extra_headers}"
        f"local f = io.open('{body_file}', 'rb'); wrk.body = f:read('*a'); f:close()\n"
        "function done(summary, latency, requests)\n"
        "  io.write(string.format('ERRORS %d\\n', summary.errors.status + summary.errors.connect"
        " + summary.errors.read + summary.errors.write + summary.errors.timeout))\n"
        "end\n"
    )
    duration = max(1, round(seconds))
    output = subprocess.run(
        [
            "wrk",
            f"-t{min(threads, connections)}",
            f"-c{connections}",
            f"-d{duration}s",
            f"--timeout={timeout_s}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    p50 = _wrk_latency(output, "50%")
    p99 = _wrk_latency(output, "99%")
    errors = int(re.search(r"ERRORS (\d+)", output).group(1))
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    return Measurement(rps, p50, p99, errors, requests)


def _wrk_latency(output: str, percentile: str) -> float:
    match = re.search(rf"^\s+{re.escape(percentile)}\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    return float(match.group(1)) * _UNITS[match.group(2)]


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: run `make setup` (it installs Debian's wrk)")


def perf_analyzer_binary() -> Path:
    """perf_analyzer: $PERF_ANALYZER, else next to this interpreter, else on PATH.

    The tritonclient 2.51 manylinux wheel (the dev extra) installs it into the
    virtual environment's bin/.
    """
    candidates = [
        os.environ.get("PERF_ANALYZER"),
        str(Path(sysconfig.get_path("scripts")) / "perf_analyzer"),
        str(Path(sys.executable).parent / "perf_analyzer"),
        shutil.which("perf_analyzer"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise SystemExit(
        "perf_analyzer is missing: run `make setup` (the dev extra installs the "
        "tritonclient 2.51 wheel, which carries it), or set PERF_ANALYZER"
    )


def perf_analyzer_environment(scratch: Path) -> dict[str, str]:
    """An environment in which perf_analyzer finds libcudart.so.12.

    It links the CUDA runtime even for HTTP on the CPU. A system one (a GPU
    host) or pip's nvidia-cuda-runtime-cu12 is used when present, else the
    copy bundled in the nvidia-pytriton wheel, linked under its soname.
    """
    env = dict(os.environ)
    if _loader_finds("libcudart.so.12"):
        return env
    sites = [Path(sysconfig.get_path("purelib")), *(Path(entry) for entry in sys.path if entry)]
    found = [
        library
        for pattern in (
            "nvidia/cuda_runtime/lib/libcudart.so.12*",
            "nvidia_pytriton.libs/libcudart*.so.12*",
        )
        for site in sites
        for library in sorted(site.glob(pattern))
    ]
    if not found:
        raise SystemExit(
            "perf_analyzer needs libcudart.so.12: install the local extra (nvidia-pytriton "
            "bundles one) or nvidia-cuda-runtime-cu12"
        )
    libs = scratch / "perf_analyzer_libs"
    libs.mkdir(parents=True, exist_ok=True)
    link = libs / "libcudart.so.12"
    if not link.exists():
        link.symlink_to(found[0])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        filter(None, [str(libs), env.get("LD_LIBRARY_PATH", "")])
    )
    return env


def _loader_finds(soname: str) -> bool:
    try:
        listing = subprocess.run(
            ["ldconfig", "-p"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return False
    return f"{soname} " in listing


def run_perf_analyzer(
    server: str,
    model: str,
    concurrency: int,
    seconds: float,
    batch: int,
    input_data: Path,
    scratch: Path,
) -> Measurement:
    """perf_analyzer at one concurrency on Triton's v2 HTTP route (`server` is host:port).

    Three measurement windows make up `seconds`, and the stability check is
    relaxed so a short run does not go on retrying; perf_analyzer reports the
    last windows' figures.
    """
    window_ms = max(300, int(seconds * 1000 / 3))
    with tempfile.NamedTemporaryFile(suffix=".csv", dir=scratch, delete=False) as report:
        report_path = Path(report.name)
    command = [
        str(perf_analyzer_binary()),
        "-m",
        model,
        "-u",
        server,
        "-i",
        "http",
        "-b",
        str(batch),
        f"--concurrency-range={concurrency}:{concurrency}",
        f"--input-data={input_data}",
        f"--measurement-interval={window_ms}",
        "--stability-percentage=1000",
        "--max-trials=3",
        "-f",
        str(report_path),
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=perf_analyzer_environment(scratch),
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"perf_analyzer failed ({result.returncode}):\n{result.stdout[-3000:]}"
            f"\n{result.stderr[-3000:]}"
        )
    with report_path.open(newline="") as stream:
        row = next(csv.DictReader(stream))
    report_path.unlink()
    return Measurement(
        requests_per_second=float(row["Inferences/Second"]) / batch,
        p50_ms=float(row["p50 latency"]) / 1000,
        p99_ms=float(row["p99 latency"]) / 1000,
        errors=0,
    )
