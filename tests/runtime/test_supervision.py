"""Start-up, failure and shutdown as SageMaker drives them, with real processes."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.conftest import ServeProcess, add_request, pings, wait_all_gone, write_add_model

StartServe = Callable[..., ServeProcess]


def test_ping_is_quick_and_not_200_while_models_load(opt_ml: Path, start_serve: StartServe) -> None:
    write_add_model(opt_ml / "model")
    server = start_serve(opt_ml, TEST_LOAD_DELAY="4")
    server.wait_until(lambda: server.ping_status() is not None, 10, "the port to answer")
    started = time.monotonic()
    response = requests.get(f"{server.url}/ping", timeout=2)
    assert time.monotonic() - started < 2
    assert response.status_code == 503
    assert response.json()["status"] == "starting"
    server.wait_ready()
    # Triton's own log lines reach serve's output (CloudWatch reads it).
    assert "successfully loaded" in server.output


def test_triton_dying_fails_ping_at_once_and_exits_nonzero(
    opt_ml: Path, start_serve: StartServe
) -> None:
    write_add_model(opt_ml / "model")
    server = start_serve(opt_ml).wait_ready()
    (triton,) = server.child_pids("tritonserver")
    os.kill(triton, signal.SIGKILL)
    server.wait_until(lambda: server.ping_status() != 200, 2, "/ping to stop answering 200")
    code = server.wait_exit(30)
    assert code != 0
    assert "tritonserver exited (killed by signal 9)" in server.output
    # The reason comes with Triton's own last lines (glog-style: I1129 12:00:00...).
    tail = server.output.split("its last output:", 1)[1].splitlines()
    assert any(re.match(r"[IWE]\d{4} \d\d:\d\d:\d\d", line) for line in tail[:40]), tail[:40]


def failed_pings(server: ServeProcess) -> list[str]:
    """The bodies of /ping answers while Triton is killed, until serve stops answering.

    serve answers "failed" for the moment between the failure and nginx's stop: kept-
    alive connections polling in a loop catch it.
    """
    with pings(server) as answers:
        time.sleep(0.3)
        (triton,) = server.child_pids("tritonserver")
        os.kill(triton, signal.SIGKILL)
        server.wait_exit(30)
    return [a[1] for a in answers if isinstance(a, tuple) and '"failed"' in a[1]]


def test_a_failed_ping_says_why_without_tritons_log(opt_ml: Path, start_serve: StartServe) -> None:
    """The log lines stay in the container's log; callers get what failed, in one line.

    /ping used to answer Triton's last 40 lines of output (model names, paths, errors) to
    any caller.
    """
    write_add_model(opt_ml / "model")
    for _attempt in range(3):
        server = start_serve(opt_ml).wait_ready()
        caught = failed_pings(server)
        if caught:
            break
    assert caught, "no /ping answer caught serve between Triton's death and its stop"
    for body in caught:
        reason = json.loads(body)["reason"]
        assert reason.startswith("tritonserver exited (killed by signal 9)"), reason
        assert "\n" not in reason and "last output" not in reason, reason
        assert "container log" in reason
    assert "its last output:" in server.output  # the whole story, in the log


@pytest.mark.container
def test_sigterm_lets_requests_in_flight_finish(opt_ml: Path, start_serve: StartServe) -> None:
    write_add_model(opt_ml / "model", count=4)
    server = start_serve(opt_ml).wait_ready()

    def slow_call() -> requests.Response:
        return requests.post(
            f"{server.url}/invocations",
            json=add_request([1, 2, 3, 4], [1, 1, 1, 1], 3.0),
            timeout=30,
        )

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(slow_call) for _ in range(4)]
        time.sleep(1.0)
        server.terminate()
        stopped = time.monotonic()
        responses = [call.result() for call in calls]
    assert [r.status_code for r in responses] == [200] * 4
    assert all(r.json()["outputs"][0]["data"] == [2, 3, 4, 5] for r in responses)
    assert server.wait_exit(30) == 0
    assert time.monotonic() - stopped < 30
    assert server.child_pids("tritonserver") == []


def test_model_that_fails_to_load_ends_startup_with_tritons_error(
    opt_ml: Path, start_serve: StartServe
) -> None:
    write_add_model(
        opt_ml / "model",
        model_py="class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        raise RuntimeError('weights file is corrupt')\n",
    )
    server = start_serve(opt_ml)
    assert server.wait_exit(60) != 0
    assert "weights file is corrupt" in server.output


def test_children_die_with_serve_even_on_sigkill(opt_ml: Path, start_serve: StartServe) -> None:
    write_add_model(opt_ml / "model")
    server = start_serve(opt_ml).wait_ready()
    children = server.child_pids("tritonserver") + server.child_pids("nginx")
    assert len(children) >= 2
    workspace = server.workspace()
    server.process.send_signal(signal.SIGKILL)
    server.wait_exit(10)
    wait_all_gone(children, 10)
    # SIGKILL leaves serve no time to remove its workspace (in the image, the
    # container's /tmp goes with the container); the test's machine keeps none.
    shutil.rmtree(workspace)


def test_a_second_serve_on_a_port_in_use_is_refused(opt_ml: Path, start_serve: StartServe) -> None:
    write_add_model(opt_ml / "model")
    first = start_serve(opt_ml).wait_ready()
    second = start_serve(opt_ml, SAGEMAKER_BIND_TO_PORT=str(first.port))
    assert second.wait_exit(30) != 0
    assert f"SAGEMAKER_BIND_TO_PORT={first.port} is already in use" in second.output
    assert "PORT=" in second.output.split("already in use", 1)[1].splitlines()[0]
    # Refused before anything started; the first server keeps every request.
    assert "starting" not in second.output
    for _ in range(20):
        response = requests.post(
            f"{first.url}/invocations", json=add_request([1, 1, 1, 1], [1, 1, 1, 1]), timeout=10
        )
        assert response.status_code == 200


def test_nginx_master_killed_stops_everything_at_once(
    opt_ml: Path, start_serve: StartServe
) -> None:
    write_add_model(opt_ml / "model")
    server = start_serve(opt_ml).wait_ready()
    (master,) = server.child_pids("nginx", direct=True)
    workers = [pid for pid in server.child_pids("nginx") if pid != master]
    triton = server.child_pids("tritonserver")
    assert workers and triton
    os.kill(master, signal.SIGKILL)
    killed = time.monotonic()
    code = server.wait_exit(30)
    assert code != 0
    assert "nginx exited (killed by signal 9)" in server.output
    # Nothing keeps the public port: no worker answers 502/503 in the master's place.
    wait_all_gone(workers + triton, 5)
    assert time.monotonic() - killed < 10
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/ping", timeout=2)


def test_a_stop_while_triton_starts_a_stub_leaves_no_stub(
    opt_ml: Path, start_serve: StartServe
) -> None:
    write_add_model(opt_ml / "model")
    server = start_serve(opt_ml, TEST_LOAD_DELAY="60")
    server.wait_until(lambda: server.child_pids(STUB), 60, "the model's stub to start")
    (stub,) = server.child_pids(STUB)
    regions = _shm_files(stub)
    assert regions, "the stub maps its shared-memory region"
    server.process.send_signal(signal.SIGTERM)
    server.wait_exit(40)
    wait_all_gone([stub], 5)
    assert not [region for region in regions if region.exists()]


STUB = "triton_python_backend_stub"


def _shm_files(pid: int) -> set[Path]:
    """The /dev/shm files a process maps."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {Path(line.split()[-1]) for line in maps if " /dev/shm/" in line}


def test_a_triton_whose_stubs_died_first_leaves_no_shared_memory(
    opt_ml: Path, start_serve: StartServe
) -> None:
    # The kernel's OOM killer takes a stub, then Triton aborts (as Triton's Python backend
    # does under load, server#8882): nothing alive maps the regions Triton made.
    write_add_model(opt_ml / "model")
    server = start_serve(opt_ml).wait_ready()
    (triton,) = server.child_pids("tritonserver", direct=True)
    (stub,) = server.child_pids(STUB)
    regions = _shm_files(stub) | _shm_files(triton)
    assert regions, "the stub maps its shared-memory region"
    os.kill(stub, signal.SIGKILL)
    wait_all_gone([stub], 5)
    os.kill(triton, signal.SIGABRT)
    assert server.wait_exit(30) != 0
    assert not [region for region in regions if region.exists()]
    assert "tritonserver exited (killed by signal 6)" in server.output
