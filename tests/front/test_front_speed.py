"""The front's settings for small hosts and many streams (issue 15; docs/benchmarks.md).

Against the real serve: nginx runs two workers where serve has two CPUs or more,
and the payload service's socket takes as many waiting connections as nginx's
own port, so 256 streams opened at once are not refused (asyncio's default of
100 refused some: nginx answered 503).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from serve.front.nginx import MAX_WORKERS, worker_count
from serve.payloads.service import LISTEN_BACKLOG
from tests.conftest import ServeProcess


def test_worker_count_is_the_cpus_up_to_two() -> None:
    assert [worker_count(cpus) for cpus in (1, 2, 3, 64)] == [1, 2, 2, 2]
    assert MAX_WORKERS == 2


def test_nginx_runs_a_worker_per_cpu_up_to_two(examples_server: ServeProcess) -> None:
    masters = examples_server.child_pids("nginx", direct=True)
    workers = set(examples_server.child_pids("nginx")) - set(masters)
    assert len(masters) == 1
    assert len(workers) == worker_count(len(os.sched_getaffinity(examples_server.process.pid)))


def test_the_payload_socket_queues_as_many_connections_as_nginx(
    examples_server: ServeProcess,
) -> None:
    socket_path = examples_server.workspace() / "front" / "payloads.sock"
    listing = subprocess.run(
        ["ss", "-xlnH", "src", str(socket_path)], capture_output=True, text=True, check=True
    ).stdout.split()
    # ss shows a listening socket's backlog as its Send-Q (the kernel caps it at somaxconn).
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert int(listing[3]) == min(LISTEN_BACKLOG, somaxconn), listing
