"""Multi-model loads that take long or fail: registry, Triton and disk stay in agreement.

Each failure answers a status SageMaker acts on, leaves nothing prepared on
disk and nothing loaded in Triton, and a retry of the same load succeeds.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

from serve.multi_model.registry import model_index
from serve.triton.client import TritonReply
from tests.conftest import ServeProcess, add_request
from tests.multi_model.test_multi_model import MARKED, load, recovered, upload_add

StartServe = Callable[..., ServeProcess]
ADD = add_request([1, 2, 3, 4], [10, 20, 30, 40])


def upload_slow(opt_ml: Path, key: str, seconds: float) -> Path:
    url = Path(upload_add(opt_ml, key, model_py=MARKED))
    (url / "SLOW").write_text(str(seconds))
    return url


def load_past_timeout(
    opt_ml: Path, start_serve: StartServe, name: str, timeout: float, seconds: float
) -> tuple[ServeProcess, Path]:
    """A multi-model serve with SERVE_MODEL_LOAD_TIMEOUT=`timeout`, after a load of a model
    that takes `seconds` to initialize failed with 504."""
    server = start_serve(
        opt_ml, SAGEMAKER_MULTI_MODEL="true", SERVE_MODEL_LOAD_TIMEOUT=str(timeout)
    ).wait_ready()
    url = upload_slow(opt_ml, name, seconds)
    response = load(server, name, str(url))
    assert response.status_code == 504, response.text
    assert "SERVE_MODEL_LOAD_TIMEOUT" in response.json()["error"]
    return server, url


def invoke(server: ServeProcess, name: str) -> requests.Response:
    return requests.post(f"{server.url}/models/{name}/invoke", json=ADD, timeout=30)


def triton_states(server: ServeProcess) -> dict[str, str]:
    """Triton's own view: each model's state in its repository index (through loopback)."""
    (pid,) = server.child_pids("tritonserver", direct=True)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    port = next(a for a in argv if a.startswith("--http-port=")).split("=", 1)[1]
    index = requests.post(f"http://127.0.0.1:{port}/v2/repository/index", timeout=10).json()
    return {model["name"]: model.get("state", "") for model in index}


def assert_nothing_left(server: ServeProcess, name: str) -> None:
    assert requests.get(f"{server.url}/models/{name}", timeout=5).status_code == 404
    assert requests.get(f"{server.url}/models", timeout=5).json() == {"models": []}
    answer = invoke(server, name)
    assert answer.status_code == 404, answer.text
    states = triton_states(server)
    assert all(state == "UNAVAILABLE" for state in states.values()), states
    workspace = server.workspace()
    assert not list((workspace / "repository").iterdir())
    assert not (workspace / "uploads").exists() or not list((workspace / "uploads").iterdir())


def test_a_load_slower_than_a_minute_is_waited_for(opt_ml: Path, start_serve: StartServe) -> None:
    """Triton's HTTP client gave up at 65 s; SageMaker lets a model load far longer."""
    server = start_serve(opt_ml, SAGEMAKER_MULTI_MODEL="true").wait_ready()
    url = upload_slow(opt_ml, "slow", 70)
    started = time.monotonic()
    response = load(server, "slow", str(url))
    assert response.status_code == 200, response.text
    assert time.monotonic() - started >= 70
    assert requests.get(f"{server.url}/models/slow", timeout=5).status_code == 200
    assert invoke(server, "slow").json()["outputs"][0]["data"] == [11, 22, 33, 44]
    assert requests.delete(f"{server.url}/models/slow", timeout=60).status_code == 200
    assert_nothing_left(server, "slow")


def test_a_load_over_its_timeout_is_504_leaves_nothing_and_a_retry_loads(
    opt_ml: Path, start_serve: StartServe
) -> None:
    # Loading takes the stub's start (a second, several on a busy host) and these 9 s:
    # over the timeout, but done well within as long again, which serve waits for
    # Triton to let go.
    server, url = load_past_timeout(opt_ml, start_serve, "late", timeout=8, seconds=9)
    # Triton finished the load after the timeout; serve unloaded it before answering.
    assert_nothing_left(server, "late")
    (url / "SLOW").unlink()
    assert load(server, "late", str(url)).status_code == 200
    assert invoke(server, "late").status_code == 200


def test_a_load_triton_holds_on_to_is_cleaned_up_before_a_retry(
    opt_ml: Path, start_serve: StartServe
) -> None:
    # Triton is still loading when the timeout and the wait for it to let go are spent;
    # the timeout leaves a plain load (the retry's) time on a busy host.
    server, url = load_past_timeout(opt_ml, start_serve, "stuck", timeout=5, seconds=16)
    assert requests.get(f"{server.url}/models", timeout=5).json() == {"models": []}
    (url / "SLOW").unlink()
    retry = load(server, "stuck", str(url))
    assert retry.status_code == 503 and "try again later" in retry.json()["error"], retry.text
    server.wait_until(
        lambda: triton_states(server).get("stuck") == "UNAVAILABLE", 30, "Triton to let go"
    )
    assert load(server, "stuck", str(url)).status_code == 200
    assert invoke(server, "stuck").status_code == 200
    assert requests.delete(f"{server.url}/models/stuck", timeout=60).status_code == 200
    assert_nothing_left(server, "stuck")


def test_triton_gone_during_a_load_is_503_not_500(opt_ml: Path, start_serve: StartServe) -> None:
    server = start_serve(opt_ml, SAGEMAKER_MULTI_MODEL="true").wait_ready()
    url = upload_slow(opt_ml, "orphan", 60)
    (triton,) = server.child_pids("tritonserver", direct=True)

    def kill_triton_once_the_stub_starts() -> bool:
        if not server.child_pids("triton_python_backend_stub"):
            return False
        os.kill(triton, signal.SIGKILL)
        return True

    killer = threading.Thread(
        target=server.wait_until, args=(kill_triton_once_the_stub_starts, 60, "the stub")
    )
    killer.start()
    response = load(server, "orphan", str(url))
    killer.join()
    assert response.status_code == 503, response.text
    assert json.loads(response.text)["error"]
    # Triton starts again (test_recovery.py), holding nothing of the failed load.
    server.wait_until(lambda: recovered(server), 60, "Triton to be back")
    assert server.ping_status() == 200
    assert_nothing_left(server, "orphan")


def test_an_index_triton_could_not_list_is_asked_for_again() -> None:
    """An unload polls Triton's index until the model is gone; once in a storm the index
    was an error (an object, not a list) and the unload answered 500 (TypeError)."""
    error = b'{"error": "failed to stat the model folder"}'
    assert model_index(TritonReply(500, error, {})) is None
    assert model_index(TritonReply(200, error, {})) is None
    index = [{"name": "a", "version": "1", "state": "READY"}]
    assert model_index(TritonReply(200, json.dumps(index).encode(), {})) == index
