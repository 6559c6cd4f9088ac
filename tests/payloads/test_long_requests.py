"""Requests SageMaker waits long for: asynchronous inference and batch transform.

Asynchronous endpoints and batch transform wait up to an hour for an answer, so
no layer (nginx, the payload service, its Triton client) may cut a request
sooner than SAGEMAKER_MODEL_SERVER_TIMEOUT (3600 s by default). A caller who
goes away takes nothing with it but its own request, and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.conftest import ServeProcess, add_request, write_add_model

StartServe = Callable[..., ServeProcess]

# Longer than the 60 s SageMaker allows a real-time request, and than the 65 s
# every layer of the front allowed before.
LONG_SECONDS = 66


def simple_request(delay: float) -> dict:
    """The add model's request in a simple shape, which the payload service adapts."""
    return {"inputs": {"A": [[1, 2, 3, 4]], "B": [[10, 20, 30, 40]], "DELAY": [[delay]]}}


def post_json(server: ServeProcess, document: dict, timeout: float) -> requests.Response:
    return requests.post(f"{server.url}/invocations", json=document, timeout=timeout)


@pytest.mark.container
def test_a_model_slower_than_a_minute_is_waited_for_on_every_path(
    opt_ml: Path, start_serve: StartServe
) -> None:
    # Two instances: the native request (nginx to Triton) and the adapted one (nginx,
    # the payload service, Triton) run side by side, so the test takes one long wait.
    write_add_model(opt_ml / "model", count=2)
    server = start_serve(opt_ml).wait_ready()
    answers: dict[str, requests.Response | BaseException] = {}

    def call(path: str, document: dict) -> None:
        try:
            answers[path] = post_json(server, document, timeout=LONG_SECONDS + 60)
        except requests.RequestException as exc:
            answers[path] = exc

    started = time.monotonic()
    calls = [
        threading.Thread(target=call, args=(path, document))
        for path, document in (
            ("native", add_request([1, 2, 3, 4], [10, 20, 30, 40], delay=LONG_SECONDS)),
            ("adapted", simple_request(LONG_SECONDS)),
        )
    ]
    for thread in calls:
        thread.start()
    for thread in calls:
        thread.join()
    assert time.monotonic() - started >= LONG_SECONDS
    native, adapted = answers["native"], answers["adapted"]
    assert isinstance(native, requests.Response) and native.status_code == 200, native
    assert native.json()["outputs"][0]["data"] == [11, 22, 33, 44]
    assert isinstance(adapted, requests.Response) and adapted.status_code == 200, adapted
    assert adapted.json() == {"predictions": [[11, 22, 33, 44]]}


def test_sagemaker_model_server_timeout_bounds_every_path(
    opt_ml: Path, start_serve: StartServe
) -> None:
    write_add_model(opt_ml / "model", count=2)
    server = start_serve(opt_ml, SAGEMAKER_MODEL_SERVER_TIMEOUT="2").wait_ready()
    for document in (add_request([1, 2, 3, 4], [1, 1, 1, 1], delay=5), simple_request(5)):
        started = time.monotonic()
        response = post_json(server, document, timeout=30)
        assert response.status_code == 504, response.text
        assert response.headers["Content-Type"] == "application/json"
        assert "SAGEMAKER_MODEL_SERVER_TIMEOUT" in response.json()["error"]
        assert 2 <= time.monotonic() - started < 5
    # Both instances finish their sleep; the model answers again.
    answer = post_json(server, add_request([1, 2, 3, 4], [1, 1, 1, 1]), timeout=30)
    assert answer.status_code == 200, answer.text


def test_bad_model_server_timeouts_are_refused(opt_ml: Path, start_serve: StartServe) -> None:
    write_add_model(opt_ml / "model")
    server = start_serve(opt_ml, SAGEMAKER_MODEL_SERVER_TIMEOUT="soon")
    assert server.wait_exit(30) == 1
    assert "SAGEMAKER_MODEL_SERVER_TIMEOUT='soon' must be a positive number" in server.output


def triton_port(server: ServeProcess) -> int:
    (pid,) = server.child_pids("tritonserver", direct=True)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return int(next(a for a in argv if a.startswith("--http-port=")).split("=", 1)[1])


def connections_to(pid: int, port: int) -> set[int]:
    """Local ports of `pid`'s established TCP connections to 127.0.0.1:`port`."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed while listed
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if fields[3] == "01" and remote_port == port and fields[9] in inodes:  # 01: ESTABLISHED
            found.add(int(fields[1].split(":")[1], 16))
    return found


def test_a_caller_who_leaves_cancels_no_one_elses_request_and_leaks_nothing(
    opt_ml: Path, start_serve: StartServe, enterable_tmp: Path
) -> None:
    # One instance: a request sent after the abandoned one waits in Triton behind it.
    write_add_model(opt_ml / "model")
    server = start_serve(opt_ml, SERVE_WORKDIR=str(enterable_tmp)).wait_ready()
    port, serve_pid = triton_port(server), server.process.pid
    body = json.dumps(simple_request(8)).encode()
    leaving = socket.create_connection(("127.0.0.1", server.port))
    leaving.sendall(
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    # The payload service holds a connection to Triton while the model works on it.
    server.wait_until(
        lambda: connections_to(serve_pid, port), 10, "the adapted request to reach Triton"
    )
    staying: dict[str, requests.Response] = {}
    waiter = threading.Thread(
        target=lambda: staying.update(
            answer=post_json(server, add_request([1, 2, 3, 4], [1, 1, 1, 1]), timeout=60)
        )
    )
    waiter.start()
    leaving.close()
    # Nobody reads that answer: the service lets go of its connection to Triton at once,
    # instead of holding it (and the request's body) until the model is done.
    server.wait_until(
        lambda: not connections_to(serve_pid, port), 4, "the abandoned request to be let go"
    )
    waiter.join()
    answer = staying["answer"]
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [2, 3, 4, 5]
    # The service still answers, and nginx keeps no body of the abandoned request.
    assert post_json(server, simple_request(0), timeout=30).status_code == 200
    assert not any((enterable_tmp / "run" / "front" / "client_body").rglob("*"))
