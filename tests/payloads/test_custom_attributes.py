"""X-Amzn-SageMaker-Custom-Attributes back to the caller: what the model sets, nothing else.

A model sets the answer's custom attributes with an output named
SAGEMAKER_CUSTOM_ATTRIBUTES (serve/sagemaker/custom_attributes.py); the caller's own
custom attributes, and any other header it sent, never come back.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import (
    ServeProcess,
    add_request,
    binary_add_request,
    free_port,
    serve_env,
    write_add_model,
)

HEADER = "X-Amzn-SageMaker-Custom-Attributes"
TAGGED_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "A").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "B").as_numpy()
            if a[0][0] == -1:  # a model that gets it wrong: a line break in a header
                value = b"trace=1\\r\\nX-Injected: yes"
            elif a[0][0] == -2:  # a line break at its end, which would end the headers
                value = b"trace=1\\n"
            else:
                value = f"model=tagged,sum={int(a.sum())}".encode()
            attributes = np.array([[value]] * a.shape[0], dtype=object)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("C", a + b),
                pb_utils.Tensor("SAGEMAKER_CUSTOM_ATTRIBUTES", attributes),
            ]))
        return responses
"""
TAGGED_CONFIG = """
name: "tagged"
backend: "python"
max_batch_size: 8
input [
  { name: "A", data_type: TYPE_FP32, dims: [ 4 ] },
  { name: "B", data_type: TYPE_FP32, dims: [ 4 ] }
]
output [
  { name: "C", data_type: TYPE_FP32, dims: [ 4 ] },
  { name: "SAGEMAKER_CUSTOM_ATTRIBUTES", data_type: TYPE_STRING, dims: [ 1 ] }
]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""
# What a caller may send that must not come back.
CALLER_HEADERS = {HEADER: "trace=from-the-caller", "X-Caller-Secret": "s3cr3t"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """`tagged` (the default model) sets custom attributes; `add` sets none."""
    root = tmp_path_factory.mktemp("custom-attributes")
    repository = root / "opt_ml" / "model"
    write_add_model(repository)
    (repository / "tagged" / "1").mkdir(parents=True)
    (repository / "tagged" / "1" / "model.py").write_text(textwrap.dedent(TAGGED_PY))
    (repository / "tagged" / "config.pbtxt").write_text(TAGGED_CONFIG)
    port = free_port()
    env = serve_env(root / "opt_ml", port, SAGEMAKER_TRITON_DEFAULT_MODEL_NAME="tagged")
    running = ServeProcess(env, port, root)
    try:
        yield running.wait_ready()
    finally:
        running.stop()


def invoke(
    server: ServeProcess, body: bytes, content_type: str, **headers: str
) -> requests.Response:
    return requests.post(
        f"{server.url}/invocations",
        data=body,
        headers={"Content-Type": content_type, **CALLER_HEADERS, **headers},
        timeout=30,
    )


def no_caller_header_came_back(response: requests.Response) -> bool:
    sent = {value for value in CALLER_HEADERS.values()}
    return "X-Caller-Secret" not in response.headers and not (sent & set(response.headers.values()))


V2 = json.dumps(add_request([1, 2, 3, 4], [10, 20, 30, 40])).encode()
CSV = b"1,2,3,4,10,20,30,40\n"
Payload = Callable[[], tuple[bytes, str]]
PAYLOADS: dict[str, Payload] = {
    "v2 JSON": lambda: (V2, "application/json"),
    "binary+json": binary_add_request,
    "CSV": lambda: (CSV, "text/csv"),
}


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_model_sets_the_answers_custom_attributes(server: ServeProcess, payload: str) -> None:
    body, content_type = PAYLOADS[payload]()
    response = invoke(server, body, content_type)
    assert response.status_code == 200, response.text
    assert response.headers[HEADER] == "model=tagged,sum=10"
    assert no_caller_header_came_back(response)


def test_adapted_answers_carry_only_the_models_outputs(server: ServeProcess) -> None:
    response = invoke(server, CSV, "text/csv")
    assert response.text.split() == ["11.0,22.0,33.0,44.0"]
    simple = invoke(server, b'{"inputs": [[1, 2, 3, 4, 10, 20, 30, 40]]}', "application/json")
    assert simple.json() == {"predictions": [[11, 22, 33, 44]]}
    assert simple.headers[HEADER] == "model=tagged,sum=10"


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_model_that_sets_none_answers_none_whatever_the_caller_sent(
    server: ServeProcess, payload: str
) -> None:
    body, content_type = PAYLOADS[payload]()
    response = invoke(server, body, content_type, **{HEADER: "target_model=add,trace=abc"})
    assert response.status_code == 200, response.text
    assert HEADER not in response.headers
    assert no_caller_header_came_back(response)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b"{not json", "application/json"), (b"1,2\n", "text/csv"), (b"", "application/json")],
)
def test_errors_carry_no_custom_attributes(
    server: ServeProcess, body: bytes, content_type: str
) -> None:
    response = invoke(server, body, content_type)
    assert response.status_code == 400, response.text
    assert HEADER not in response.headers
    assert no_caller_header_came_back(response)


@pytest.mark.parametrize("first", [-1, -2])
def test_custom_attributes_the_header_cannot_carry_are_the_models_error(
    server: ServeProcess, first: int
) -> None:
    """-1: a line break inside the value; -2: one at its end ("trace=1\\n").

    The check used `$`, which matches before a final line break: "trace=1\\n" became a
    header line that ended the answer's header block early, and nginx read the rest
    (Content-Length among it) as the body.
    """
    body = json.dumps(add_request([first, 2, 3, 4], [10, 20, 30, 40])).encode()
    with requests.Session() as session:
        response = session.post(
            f"{server.url}/invocations",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        assert response.status_code == 500, response.text
        assert "SAGEMAKER_CUSTOM_ATTRIBUTES" in response.json()["error"]
        assert "X-Injected" not in response.headers and HEADER not in response.headers
        # The connection is whole: its next answer is the next request's.
        again = session.post(f"{server.url}/invocations", data=V2, timeout=30)
        assert again.status_code == 200 and again.headers[HEADER] == "model=tagged,sum=10"


def test_multi_model_endpoints_answer_the_models_custom_attributes(
    opt_ml: Path, start_serve: Callable[..., ServeProcess]
) -> None:
    server = start_serve(opt_ml, SAGEMAKER_MULTI_MODEL="true").wait_ready()
    url = opt_ml / "models" / "9d1f" / "model"
    (url / "1").mkdir(parents=True)
    (url / "1" / "model.py").write_text(textwrap.dedent(TAGGED_PY))
    (url / "config.pbtxt").write_text(TAGGED_CONFIG)
    load = {"model_name": "9d1f", "url": str(url)}
    assert requests.post(f"{server.url}/models", json=load, timeout=120).status_code == 200
    for body, content_type in (PAYLOADS["v2 JSON"](), PAYLOADS["binary+json"]()):
        response = requests.post(
            f"{server.url}/models/9d1f/invoke",
            data=body,
            headers={"Content-Type": content_type, **CALLER_HEADERS},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert response.headers[HEADER] == "model=tagged,sum=10"
        assert no_caller_header_came_back(response)
    assert response.content.startswith(b'{"model_name":"9d1f"')
