"""System calls per request: serve's nginx against a bare `proxy_pass` nginx.

Issue 15 asked where a small host's cycles go. CPU per request (invocations.py)
says how much each process costs; this says what nginx does for it: `strace -c`
attached to every nginx process while wrk sends native v2 JSON to the NCF
example, first through serve's front, then through a bare nginx in front of the
same Triton (build/bench/bare_proxy.py), and the calls each made per request.
strace slows the workers, so the rates are not the point; both paths are slowed
alike and the counts per request are what compares.

Run: `.venv/bin/python build/bench/nginx_syscalls.py` (needs strace).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bare_proxy import bare_proxy
from load_generators import JSON, ncf_body, require_wrk, run_wrk
from serve_under_test import serve_with_reference

# strace -c's table: % time, seconds, usecs/call, calls, [errors], syscall.
ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def nginx_processes(root: int) -> list[int]:
    """Every nginx process in `root`'s tree, `root` included (a master and its workers)."""
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        if Path(f"/proc/{pid}/comm").read_text().strip() == "nginx":
            found.append(pid)
        pending += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    if not found:
        raise SystemExit(f"no nginx under pid {root}")
    return found


def syscalls_per_request(
    url: str, root: int, body_file: Path, connections: int, seconds: int
) -> tuple[int, dict[str, float]]:
    """wrk against `url`, strace counting the calls of the nginx under `root`: (requests,
    calls each). The master takes no requests; its calls, if any, count too."""
    output = body_file.with_suffix(f".{root}.strace")
    command = ["strace", "-c", "-f", "-o", str(output)]
    for pid in nginx_processes(root):
        command += ["-p", str(pid)]
    tracer = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    time.sleep(1)
    measured = run_wrk(url, body_file, connections, seconds, JSON)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(30)
    calls: dict[str, int] = collections.Counter()
    for line in output.read_text().splitlines():
        match = ROW.match(line)
        if match and match.group(2) != "total":
            calls[match.group(2)] += int(match.group(1))
    return measured.requests, {name: n / measured.requests for name, n in calls.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ncf_food")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    require_wrk()
    if shutil.which("strace") is None:
        raise SystemExit("strace is not installed (apt-get install strace)")
    work = Path(tempfile.mkdtemp(prefix="bench-syscalls-"))
    body_file = work / "body.json"
    body_file.write_text(ncf_body(1))
    with serve_with_reference(work / "serve", args.model) as serve:
        paths = {"serve": (serve.url, serve.pid)}
        with bare_proxy(work / "bare", serve.triton_http, args.model) as (bare_url, bare_pid):
            paths["bare proxy_pass"] = (bare_url, bare_pid)
            results = {}
            for name, (url, root) in paths.items():
                run_wrk(f"{url}/invocations", body_file, args.connections, 1, JSON)
                results[name] = syscalls_per_request(
                    f"{url}/invocations", root, body_file, args.connections, args.seconds
                )
    names = sorted(
        {call for _, calls in results.values() for call in calls},
        key=lambda call: -max(calls.get(call, 0.0) for _, calls in results.values()),
    )
    print(f"nginx's system calls per request, {args.connections} connections, strace -c")
    print(f"{'call':<16}" + "".join(f"{name:>18}" for name in results))
    for call in names:
        row = "".join(f"{calls.get(call, 0.0):>18.2f}" for _, calls in results.values())
        print(f"{call:<16}{row}")
    totals = "".join(f"{sum(calls.values()):>18.2f}" for _, calls in results.values())
    print(f"{'total':<16}{totals}")
    print("requests traced: " + ", ".join(f"{k} {n}" for k, (n, _) in results.items()))


if __name__ == "__main__":
    main()
