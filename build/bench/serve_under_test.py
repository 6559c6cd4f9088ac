"""One `serve` for a benchmark, with Triton's own SageMaker frontend opened beside it.

Its Triton opens Triton's own SageMaker frontend on a second port, so both
paths reach the very same model instances and the only difference measured is
the front. serve refuses that flag in SAGEMAKER_TRITON_ADDITIONAL_ARGS (the
frontend listens on every address), so the benchmark gives serve a Triton of
its own through TRITONSERVER_BIN: a script that adds the flags and runs the
real server, beside links to its backends and stubs. Triton's v2 HTTP port on
loopback (where nginx sends traffic) is read from serve's log, for load
generators that speak v2.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from serve.triton.install import locate_triton

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "model_repository"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen | None = None, timeout: float = 180) -> None:
    """Poll `url`/ping until it answers 200; stop early if `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"serve exited with {process.returncode} before becoming ready")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url}/ping did not answer 200 in time")


@dataclass(frozen=True)
class RunningServe:
    """Where a benchmark reaches one `serve` and the Triton behind it."""

    url: str
    # Triton's own SageMaker frontend on the same Triton.
    reference_url: str
    # host:port of Triton's v2 HTTP frontend on loopback.
    triton_http: str
    log: Path
    # serve's pid (0 for an endpoint this benchmark did not start).
    pid: int = 0

    def cpu_seconds(self) -> float:
        """CPU time used so far by serve and every process under it (nginx, Triton, stubs)."""
        return process_tree_cpu_seconds(self.pid) if self.pid else 0.0

    def cpu_seconds_by_name(self) -> dict[str, float]:
        """The same, per process name (nginx, tritonserver, the stubs, serve's Python)."""
        return process_tree_cpu_seconds_by_name(self.pid) if self.pid else {}


@contextlib.contextmanager
def serve_with_reference(
    work: Path,
    model: str,
    repository: Path = EXAMPLES,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 180,
) -> Iterator[RunningServe]:
    """Run `serve` on `repository` (linked as $OPT_ML/model) until the block ends."""
    opt_ml = work / "opt_ml"
    opt_ml.mkdir(parents=True)
    (opt_ml / "model").symlink_to(repository.resolve())
    port, reference_port = free_port(), free_port()
    env = dict(
        os.environ,
        OPT_ML=str(opt_ml),
        SAGEMAKER_BIND_TO_PORT=str(port),
        SAGEMAKER_TRITON_DEFAULT_MODEL_NAME=model,
        SAGEMAKER_TRITON_LOG_VERBOSE="0",
        TRITONSERVER_BIN=str(
            triton_with_sagemaker_frontend(work / "triton", reference_port, env_bin(extra_env))
        ),
    )
    # A TRITONSERVER_BIN asked for is the one the script runs.
    env.update({k: v for k, v in (extra_env or {}).items() if k != "TRITONSERVER_BIN"})
    log = work / "serve.log"
    with log.open("w") as output:
        serve = subprocess.Popen(
            [str(Path(sys.executable).parent / "serve")],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, serve, timeout)
            wait_ready(f"http://127.0.0.1:{reference_port}", serve, timeout)
        except SystemExit:
            # The work folder goes with the benchmark: say why here, while the log is there.
            tail = log.read_text(errors="replace").splitlines()[-40:]
            print(f"--- the last lines of {log}:", *tail, sep="\n", file=sys.stderr)
            raise
        yield RunningServe(
            url=url,
            reference_url=f"http://127.0.0.1:{reference_port}",
            triton_http=f"127.0.0.1:{_triton_http_port(log)}",
            log=log,
            pid=serve.pid,
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()


def env_bin(extra_env: Mapping[str, str] | None) -> Path | None:
    """The TRITONSERVER_BIN a benchmark asks for, if any."""
    value = (extra_env or {}).get("TRITONSERVER_BIN") or os.environ.get("TRITONSERVER_BIN")
    return Path(value) if value else None


def triton_with_sagemaker_frontend(folder: Path, port: int, configured: Path | None) -> Path:
    """A tritonserver for serve that also opens Triton's SageMaker frontend on `port`.

    `folder` becomes an installation serve can find its parts in (bin/,
    backends/, python_backend_stubs/): the script runs the real server with
    serve's flags and then these, which win.
    """
    install = locate_triton(configured)
    return install.wrapped(
        folder,
        "#!/bin/sh\n"
        f'exec {shlex.quote(str(install.binary))} "$@" '
        f"--allow-sagemaker=true --sagemaker-port={port}\n",
    )


def _triton_http_port(log: Path) -> int:
    return triton_http_port(log.read_text())


def triton_http_port(output: str, protocol: str = "http") -> int:
    """Triton's --http-port (or --grpc-port), from the command line serve logs when it
    starts Triton."""
    match = re.search(rf"starting tritonserver: .*--{protocol}-port=(\d+)", output)
    if match is None:
        raise SystemExit(f"Triton's {protocol} port is not in serve's log")
    return int(match.group(1))


def process_tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of `root` and its descendants, from /proc."""
    return sum(process_tree_cpu_seconds_by_name(root).values())


def process_tree_cpu_seconds_by_name(root: int) -> dict[str, float]:
    """User + system CPU seconds of `root` and its descendants, per process name."""
    parents: dict[int, int] = {}
    ticks: dict[int, tuple[str, int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            name = text[text.index("(") + 1 : text.rindex(")")]
            fields = text.rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            parents[pid] = int(fields[1])
            ticks[pid] = (name, _cpu_ticks(fields))
    totals: dict[str, float] = {}
    for pid, (name, used) in ticks.items():
        ancestor = pid
        while ancestor not in (root, 0, 1) and ancestor in parents:
            ancestor = parents[ancestor]
        if ancestor == root:
            totals[name] = totals.get(name, 0.0) + used / os.sysconf("SC_CLK_TCK")
    return totals


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads, no children)."""
    return _cpu_ticks(_stat_fields(Path(f"/proc/{pid}/stat"))) / os.sysconf("SC_CLK_TCK")


def _stat_fields(stat: Path) -> list[str]:
    """The fields of /proc/PID/stat after the command name (which may hold spaces)."""
    return stat.read_text().rsplit(")", 1)[1].split()


def _cpu_ticks(fields: list[str]) -> int:
    return int(fields[11]) + int(fields[12])  # utime + stime
