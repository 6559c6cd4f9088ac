"""Benchmark: what adapting a large body costs serve, and every other caller meanwhile.

One `serve` runs the NCF example as a batch transform job would
(`SAGEMAKER_BATCH=true`: bodies up to 100 MB; past 6 MB they are spooled to
disk). For each large body it measures, while that body is adapted by the
payload service (decoded, split into Triton requests, answered as CSV):

- the peak growth of serve's own process (VmHWM after it was reset, less the
  resident memory before), the process the payload service runs in, in MB
  and as a multiple of the body;
- the latency of small adapted requests (`42,7` as text/csv, 100 a second, to
  the other NCF model so that they do not queue behind the large body's
  chunks in one model instance) that arrive meanwhile: p50, p99 and the
  worst, against the same requests with nothing else in flight.

A body's growth is capped (`--rss-cap-gb`): past it serve is stopped and the
row says so, so a run of code that holds bodies 80 times over does not take
the machine down with it.

With `--direct` the same small requests also go straight to the payload
service's socket, nginx left out: what the service itself makes them wait.

Run: `.venv/bin/python build/bench/payload_memory.py [--cases csv-6mb,csv-100mb] [--direct]`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import queue
import shutil
import signal
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from run_stamp import run_stamp
from serve_under_test import serve_with_reference

MEBIBYTE = 1024 * 1024
SMALL_BODY = b"42,7\n"
# The small requests go to the other NCF model: what they wait for is serve, not a model
# instance busy with the large body's chunks.
SMALL_HEADERS = {
    "Content-Type": "text/csv",
    "X-Amzn-SageMaker-Custom-Attributes": "target_model=ncf_fashion",
}
# Connections the small requests share: more than are ever due while one is answered.
SENDERS = 8


def ncf_pairs(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """About `size` bytes' worth of (user, item) pairs as CSV lines, in the example's ranges."""
    count = size // 9
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2000, count), rng.integers(0, 500, count)


def csv_body(size: int) -> bytes:
    users, items = ncf_pairs(size, 1)
    pairs = zip(users.tolist(), items.tolist(), strict=True)
    return "".join(f"{u},{i}\n" for u, i in pairs).encode()


def jsonl_body(size: int) -> bytes:
    users, items = ncf_pairs(size * 9 // 11, 2)
    pairs = zip(users.tolist(), items.tolist(), strict=True)
    return "".join(f"[{u},{i}]\n" for u, i in pairs).encode()


def json_body(size: int) -> bytes:
    users, items = ncf_pairs(size * 9 // 11, 3)
    rows = ",".join(f"[{u},{i}]" for u, i in zip(users.tolist(), items.tolist(), strict=True))
    return ('{"instances":[' + rows + "]}").encode()


@dataclass(frozen=True)
class Case:
    name: str
    content_type: str
    body: Callable[[], bytes]


CASES = {
    "csv-6mb": Case("6 MB CSV", "text/csv", lambda: csv_body(6_000_000)),
    "csv-100mb": Case("100 MB CSV (batch)", "text/csv", lambda: csv_body(100 * 1_000_000)),
    "jsonl-6mb": Case("6 MB JSON Lines", "application/jsonlines", lambda: jsonl_body(6_000_000)),
    "json-6mb": Case("6 MB JSON", "application/json", lambda: json_body(6_000_000)),
}


def status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise SystemExit(f"no {field} in /proc/{pid}/status")


@dataclass(frozen=True)
class Target:
    """Where small requests go: serve's public port, or the payload service's own socket."""

    port: int = 0
    socket_path: Path | None = None

    def connect(self) -> http.client.HTTPConnection:
        if self.socket_path is None:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=3600)
        return UnixConnection(self.socket_path)

    @property
    def path(self) -> str:
        return "/invocations" if self.socket_path is None else "/_serve/invocations"

    @property
    def headers(self) -> dict[str, str]:
        if self.socket_path is None:
            return SMALL_HEADERS
        return {"Content-Type": "text/csv", "X-Serve-Model": "ncf_fashion"}


class UnixConnection(http.client.HTTPConnection):
    """HTTP on a unix socket: the payload service as nginx reaches it."""

    def __init__(self, path: Path):
        super().__init__("localhost", timeout=3600)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(self.socket_path))


def payload_socket(serve: int) -> Path:
    """The payload service's socket, beside the repository `serve` gave its Triton."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != serve:
                continue
            for argument in (stat.parent / "cmdline").read_bytes().split(b"\0"):
                if argument.startswith(b"--model-repository="):
                    folder = Path(os.fsdecode(argument.split(b"=", 1)[1])).parent
                    if (folder / "front" / "payloads.sock").exists():
                        return folder / "front" / "payloads.sock"
    raise SystemExit("no payload service socket found")


def small_latencies(target: Target, until: Callable[[], bool], rate: float = 100.0) -> list[float]:
    """Small adapted requests due `rate` times a second until `until()`, answered or not.

    Each one's latency runs from when it was due, not from when a connection was
    free to send it: a service that stops answering for a second makes every
    request due in that second slow, as callers would see it.
    """
    due: queue.Queue[float | None] = queue.Queue()
    latencies: list[float] = []
    failures: list[int] = []

    def send() -> None:
        connection = target.connect()
        while (scheduled := due.get()) is not None:
            connection.request("POST", target.path, SMALL_BODY, target.headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                failures.append(response.status)
            latencies.append(time.perf_counter() - scheduled)
        connection.close()

    senders = [threading.Thread(target=send) for _ in range(SENDERS)]
    for sender in senders:
        sender.start()
    upcoming = time.perf_counter()
    while not until():
        due.put(upcoming)
        upcoming += 1 / rate
        time.sleep(max(0.0, upcoming - time.perf_counter()))
    for _ in senders:
        due.put(None)
    for sender in senders:
        sender.join()
    if failures:
        raise SystemExit(f"small requests failed: {failures[:5]}")
    return latencies


def deadline(seconds: float) -> Callable[[], bool]:
    """True once `seconds` have passed."""
    end = time.monotonic() + seconds
    return lambda: time.monotonic() > end


def summary(latencies: list[float]) -> str:
    if not latencies:
        return "none answered"
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {ordered[-1] * 1000:.0f} ms ({len(ordered)} requests)"
    )


def run_case(port: int, pid: int, case: Case, cap: int, direct: Target | None) -> str:
    body = case.body()
    quiet = small_latencies(Target(port), deadline(3.0))
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = status_bytes(pid, "VmRSS")
    done = threading.Event()
    outcome: dict[str, object] = {}
    capped = threading.Event()

    def big() -> None:
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
        try:
            connection.request("POST", "/invocations", body, {"Content-Type": case.content_type})
            response = connection.getresponse()
            answer = response.read()
            outcome["status"] = response.status
            outcome["answer"] = answer[:200]
        except (OSError, http.client.HTTPException) as exc:
            outcome["status"] = f"failed: {exc}"
        outcome["seconds"] = time.perf_counter() - started
        done.set()

    def watch() -> None:
        while not done.wait(0.05):
            if status_bytes(pid, "VmRSS") - before > cap:
                capped.set()
                os.killpg(pid, signal.SIGKILL)
                return

    threading.Thread(target=watch, daemon=True).start()
    sender = threading.Thread(target=big)
    sender.start()
    straight: list[float] = []
    prober = None
    if direct is not None:
        prober = threading.Thread(
            target=lambda: straight.extend(small_latencies(direct, done.is_set))
        )
        prober.start()
    try:
        during = small_latencies(Target(port), done.is_set)
    except (OSError, http.client.HTTPException):
        during = []
    if prober is not None:
        prober.join()
    sender.join()
    if capped.is_set():
        return (
            f"| {case.name} | {len(body)} | stopped past {cap / MEBIBYTE:.0f} MB | - | - | "
            f"{summary(quiet)} |"
        )
    growth = status_bytes(pid, "VmHWM") - before
    if outcome.get("status") != 200:
        print(f"{case.name}: {outcome}")
    return (
        f"| {case.name} | {len(body)} | {growth / MEBIBYTE:.0f} MB ({growth / len(body):.1f}x) | "
        f"{outcome['seconds']:.1f} s ({outcome['status']}) | {summary(during)} | "
        f"{summary(quiet)} |" + (f" {summary(straight)} |" if direct is not None else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="csv-6mb,csv-100mb", help=", ".join(CASES))
    parser.add_argument("--rss-cap-gb", type=float, default=10.0)
    parser.add_argument(
        "--direct",
        action="store_true",
        help="also send the small requests straight to the payload service's socket "
        "(nginx left out: what the service itself makes them wait)",
    )
    args = parser.parse_args()
    cap = int(args.rss_cap_gb * 1024 * MEBIBYTE)
    rows = []
    for name in args.cases.split(","):
        case = CASES[name]
        # A fresh serve per case: a killed one (past the cap) takes nothing else with it.
        work = Path(tempfile.mkdtemp(prefix="bench-payload-memory-"))
        environment = {"SAGEMAKER_BATCH": "true"}
        try:
            with serve_with_reference(work, "ncf_food", extra_env=environment) as serve:
                port = int(serve.url.rsplit(":", 1)[1])
                small_latencies(Target(port), deadline(1.0))
                direct = Target(socket_path=payload_socket(serve.pid)) if args.direct else None
                rows.append(run_case(port, serve.pid, case, cap, direct))
                print(rows[-1], flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{run_stamp()}\n")
    straight = " straight to the payload service meanwhile |" if args.direct else ""
    print(
        "| body | bytes | serve's peak growth | adapted in | small requests meanwhile | "
        "small requests alone |" + straight
    )
    print("|---|---|---|---|---|---|" + ("---|" if args.direct else ""))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
