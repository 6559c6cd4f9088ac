"""The front's settings for small hosts and many streams (issue 15; docs/benchmarks.md).

Against the real serve: nginx runs two workers where serve has two CPUs or more
(SERVE_NGINX_WORKERS sets another number), and the payload service's socket
takes as many waiting connections as nginx's own port, so 256 streams opened
at once are not refused (asyncio's default of 100 refused some: nginx
answered 503).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import requests

from serve.front.nginx import MAX_WORKERS, worker_count
from serve.payloads.service import LISTEN_BACKLOG
from tests.conftest import ServeProcess, add_request, write_add_model

StartServe = Callable[..., ServeProcess]


def test_worker_count_is_the_cpus_up_to_two_unless_set() -> None:
    assert [worker_count(None, cpus) for cpus in (1, 2, 3, 64)] == [1, 2, 2, 2]
    assert MAX_WORKERS == 2
    assert [worker_count(8, cpus) for cpus in (1, 2, 64)] == [8, 8, 8]


def nginx_workers(server: ServeProcess) -> int:
    masters = server.child_pids("nginx", direct=True)
    assert len(masters) == 1
    return len(set(server.child_pids("nginx")) - set(masters))


def test_nginx_runs_a_worker_per_cpu_up_to_two(examples_server: ServeProcess) -> None:
    cpus = len(os.sched_getaffinity(examples_server.process.pid))
    assert nginx_workers(examples_server) == worker_count(None, cpus)


def test_serve_nginx_workers_sets_their_number(opt_ml: Path, start_serve: StartServe) -> None:
    write_add_model(opt_ml / "model")
    server = start_serve(opt_ml, SERVE_NGINX_WORKERS="3").wait_ready()
    assert nginx_workers(server) == 3
    answer = requests.post(
        f"{server.url}/invocations", json=add_request([1, 2, 3, 4], [10, 20, 30, 40]), timeout=30
    )
    assert answer.status_code == 200, answer.text


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
