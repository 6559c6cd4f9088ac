"""A repository for the payload tests: the NCF examples and small Python-backend models.

- `echo`: one BYTES input, one BYTES output ("echo:" + the input), batching;
- `twin`: inputs A and B (FP32, dims [2]), outputs SUM and DIFF;
- `twin_pinned`: the same code, with SERVE_PAYLOAD_INPUTS="B,A" and
  SERVE_PAYLOAD_OUTPUTS="DIFF" in its config;
- `stream`: decoupled, one token per 0.25 s (`max_tokens` of them, 4 by default).
"""

from __future__ import annotations

import dataclasses
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import EXAMPLES, ServeProcess, free_port, serve_env

TOKEN_SECONDS = 0.25

ECHO_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            echoed = np.array([[b"echo:" + v for v in row] for row in values], dtype=object)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", echoed)]))
        return responses
"""

TWIN_PY = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "A").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "B").as_numpy()
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("SUM", a + b), pb_utils.Tensor("DIFF", a - b)]
            ))
        return responses
"""

TWIN_CONFIG = """
    max_batch_size: 16
    input [ { name: "A", data_type: TYPE_FP32, dims: [ 2 ] },
            { name: "B", data_type: TYPE_FP32, dims: [ 2 ] } ]
    output [ { name: "SUM", data_type: TYPE_FP32, dims: [ 2 ] },
             { name: "DIFF", data_type: TYPE_FP32, dims: [ 2 ] } ]
    """

STREAM_PY = f"""
import json
import time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy()
            prompt = text.reshape(-1)[0].decode()
            count = pb_utils.get_input_tensor_by_name(request, "max_tokens")
            count = int(count.as_numpy().reshape(-1)[0]) if count is not None else 4
            suffix = json.loads(request.parameters() or "{{}}").get("suffix", "")
            if prompt == "refuse":
                refusal = pb_utils.TritonError("the prompt was refused")
                sender.send(
                    pb_utils.InferenceResponse(error=refusal),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
                continue
            for i in range(count):
                time.sleep({TOKEN_SECONDS})
                token = f"{{prompt}}-{{i}}{{suffix}}".encode()
                out = pb_utils.Tensor("text_output", np.array([token], dtype=object))
                sender.send(pb_utils.InferenceResponse([out]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


def write_model(
    repository: Path, name: str, config: str, model_py: str, instances: int | None = 1
) -> None:
    """A Python-backend model; `instances` CPU instances (None: `config` says)."""
    folder = repository / name
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.py").write_text(textwrap.dedent(model_py))
    group = f"instance_group [ {{ kind: KIND_CPU, count: {instances} }} ]\n" if instances else ""
    (folder / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "python"\n' + textwrap.dedent(config) + group
    )


def write_payload_models(repository: Path) -> None:
    write_model(
        repository,
        "echo",
        """
        max_batch_size: 8
        input [ { name: "INPUT", data_type: TYPE_STRING, dims: [ 1 ] } ]
        output [ { name: "OUTPUT", data_type: TYPE_STRING, dims: [ 1 ] } ]
        """,
        ECHO_PY,
    )
    write_model(repository, "twin", TWIN_CONFIG, TWIN_PY)
    pins = """
        parameters { key: "SERVE_PAYLOAD_INPUTS" value: { string_value: "B,A" } }
        parameters { key: "SERVE_PAYLOAD_OUTPUTS" value: { string_value: "DIFF" } }
        """
    write_model(repository, "twin_pinned", TWIN_CONFIG + pins, TWIN_PY)
    write_model(
        repository,
        "stream",
        """
        max_batch_size: 0
        model_transaction_policy { decoupled: true }
        input [ { name: "text_input", data_type: TYPE_STRING, dims: [ 1 ] },
                { name: "max_tokens", data_type: TYPE_INT32, dims: [ 1 ], optional: true } ]
        output [ { name: "text_output", data_type: TYPE_STRING, dims: [ 1 ] } ]
        """,
        STREAM_PY,
    )


def start_payload_server(root: Path, ncf: bool = True, **env: str) -> ServeProcess:
    """`serve` on the payload models and the NCF examples (ncf_food by default)."""
    opt_ml = root / "opt_ml"
    repository = opt_ml / "model"
    repository.mkdir(parents=True)
    for name in ("ncf_food", "ncf_fashion") if ncf else ():
        (repository / name).symlink_to(EXAMPLES / name)
    write_payload_models(repository)
    port = free_port()
    settings = {"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "ncf_food", **env}
    return ServeProcess(serve_env(opt_ml, port, **settings), port, root)


@pytest.fixture(scope="module")
def payload_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    server = start_payload_server(
        tmp_path_factory.mktemp("payloads"), SERVE_MAX_BODY_BYTES="262144"
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@dataclasses.dataclass(frozen=True)
class Meanwhile:
    """A large request's time and status, and how long each small one sent meanwhile took."""

    large_seconds: float
    large_status: int
    waits: list[float]

    def describe(self) -> str:
        return (
            f"large: {self.large_seconds:.2f} s; small: {len(self.waits)}, "
            f"longest {max(self.waits, default=0):.3f} s"
        )


def small_requests_meanwhile(
    url: str, large: Callable[[], requests.Response], small: Callable[[], dict[str, object]]
) -> Meanwhile:
    """Send `large()` once and, until it is answered, `small()`'s request (requests.post's
    arguments) to `url` one after another, each of which must be a 200: what the payload
    service makes other callers wait while it works on a large body (issue 24, defect 6)."""
    done = threading.Event()
    answer: list[requests.Response] = []
    started_large = time.monotonic()

    def send_large() -> None:
        try:
            answer.append(large())
        finally:
            done.set()

    waits = []
    sender = threading.Thread(target=send_large)
    sender.start()
    with requests.Session() as session:
        while not done.is_set():
            started = time.monotonic()
            response = session.post(url, **small())
            assert response.status_code == 200, response.text
            if not done.is_set():
                waits.append(time.monotonic() - started)
    sender.join()
    assert answer, "the large request raised"
    return Meanwhile(time.monotonic() - started_large, answer[0].status_code, waits)


def writer_pids(server: ServeProcess) -> list[int]:
    """serve's writer processes (serve/payloads/writers.py)."""
    return [
        pid
        for pid in server.child_pids("python", direct=True)
        if b"serve.payloads.writers" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
