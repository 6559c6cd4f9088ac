"""/invocations as NVIDIA's QA and AWS's single-model notebooks call it, on both fronts.

One serve (default model `sm_model`) with Triton's SageMaker frontend on the
same Triton (tests/compat/conftest.py). Each test sends the same request to
both and asserts the same status and the same parsed answer, or, where serve
answers otherwise on purpose, says so and asserts serve's documented answer.

Sources of the patterns (facts, not code):
- NVIDIA `qa/L0_sagemaker/sagemaker_test.py`: v2 JSON by hand and by
  tritonclient, binary+json requests and answers, the malformed
  `json-header-size` spellings answered 400;
- AWS `sagemaker-triton` notebooks (NLP BERT, TensorFlow, realtime SME, flan-T5,
  ResNet): `ContentType="application/octet-stream"`, `Body=json.dumps(v2)`, and
  binary+json with `tritonclient`'s `generate_request_body` and the answer's
  header length read from its Content-Type;
- the SageMaker SDK's Triton predictor (ModelBuilder): `application/json` with
  `Accept: application/json`;
- QA's generate tests post with no Content-Type at all (`requests.post(url, data=str)`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

from tests.compat.conftest import BINARY_TYPE, Fronts, sagemaker_runtime, sm_request

EXPECTED = {
    "model_name": "sm_model",
    "model_version": "1",
    "outputs": [
        {"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(0, 32, 2))},
        {"name": "OUTPUT1", "datatype": "INT32", "shape": [1, 16], "data": [0] * 16},
    ],
}


@pytest.fixture(scope="module")
def fronts(fronts_factory: Callable[..., Fronts]) -> Fronts:
    return fronts_factory(("sm_model", "mock_llm"), SAGEMAKER_TRITON_DEFAULT_MODEL_NAME="sm_model")


def invoke_both(
    fronts: Fronts, body: bytes | str, headers: dict[str, str] | None = None
) -> tuple[requests.Response, requests.Response]:
    ours, theirs = fronts.both("POST", "/invocations", data=body, headers=headers or {})
    return ours, theirs


def client_request(binary_inputs: bool, binary_outputs: bool) -> tuple[bytes, int]:
    """QA's request built by tritonclient; (body, JSON header length)."""
    data = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    inputs[0].set_data_from_numpy(data, binary_data=binary_inputs)
    inputs[1].set_data_from_numpy(data, binary_data=False)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary_outputs),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=False),
    ]
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs
    )
    return body, header_length or len(body)


def parsed_arrays(response: requests.Response) -> dict[str, Any]:
    """An answer as tritonclient reads it: the header length from the Content-Type."""
    content_type = response.headers["Content-Type"]
    header_length = None
    if content_type.startswith(f"{BINARY_TYPE};json-header-size="):
        header_length = int(content_type.split("json-header-size=")[1])
    result = httpclient.InferenceServerClient.parse_response_body(
        response.content, header_length=header_length
    )
    return {name: result.as_numpy(name).tolist() for name in ("OUTPUT0", "OUTPUT1")}


# --- NVIDIA qa/L0_sagemaker/sagemaker_test.py


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json"},  # QA, the SDK's Triton predictor
        {"Content-Type": "application/json", "Accept": "application/json"},
        {"Content-Type": "application/octet-stream"},  # AWS's notebooks
        {},  # QA's generate tests; a few notebooks
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-anything-else"},
    ],
    ids=["json", "json-accept-json", "octet-stream", "none", "text-plain", "other"],
)
def test_v2_json_with_any_content_type(fronts: Fronts, headers: dict[str, str]) -> None:
    ours, theirs = invoke_both(fronts, json.dumps(sm_request()), headers)
    assert theirs.status_code == 200, theirs.text
    assert ours.status_code == 200, ours.text
    assert ours.json() == theirs.json() == EXPECTED
    assert ours.headers["Content-Type"] == theirs.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("binary_inputs", "binary_outputs"),
    [(False, False), (True, False), (False, True), (True, True)],
)
def test_tritonclient_requests_and_answers(
    fronts: Fronts, binary_inputs: bool, binary_outputs: bool
) -> None:
    body, header_length = client_request(binary_inputs, binary_outputs)
    content_type = (
        f"{BINARY_TYPE};json-header-size={header_length}" if binary_inputs else "application/json"
    )
    ours, theirs = invoke_both(fronts, body, {"Content-Type": content_type})
    assert theirs.status_code == ours.status_code == 200, (ours.text, theirs.text)
    assert ours.headers["Content-Type"] == theirs.headers["Content-Type"]
    assert parsed_arrays(ours) == parsed_arrays(theirs)
    if not binary_outputs:
        assert ours.json() == theirs.json() == EXPECTED


@pytest.mark.parametrize(
    "size",
    ["additional-string{n}", "-123", "12345", "99999999999"],
    ids=["not-a-number", "negative", "past-the-body", "out-of-int-range"],
)
def test_malformed_header_sizes_are_400(fronts: Fronts, size: str) -> None:
    body, header_length = client_request(True, False)
    content_type = f"{BINARY_TYPE};json-header-size={size.format(n=header_length)}"
    ours, theirs = invoke_both(fronts, body, {"Content-Type": content_type})
    assert ours.status_code == theirs.status_code == 400, (ours.text, theirs.text)
    assert ours.json()["error"]
    # Neither front went down over it (QA's out-of-range case crashed Triton once).
    for url in (fronts.serve.url, fronts.reference):
        assert requests.get(f"{url}/ping", timeout=5).status_code == 200


def test_text_before_the_binary_type_is_400(fronts: Fronts) -> None:
    body, header_length = client_request(True, False)
    content_type = f"additional-string/{BINARY_TYPE};json-header-size={header_length}"
    ours, theirs = invoke_both(fronts, body, {"Content-Type": content_type})
    assert theirs.status_code == 400, theirs.text
    assert ours.status_code == 400, ours.text
    assert "binary+json" in ours.json()["error"]


# --- what serve reads that Triton's frontend cannot


@contextlib.contextmanager
def python_stopped(fronts: Fronts) -> Iterator[None]:
    """serve's own process (its payload service and control app) stopped; nginx and Triton run."""
    os.kill(fronts.serve.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(fronts.serve.process.pid, signal.SIGCONT)


def test_octet_stream_v2_takes_no_python_hop(fronts: Fronts) -> None:
    """sm_model has no lone BYTES input: nginx sends its octet-stream bodies to Triton itself."""
    with python_stopped(fronts):
        response = requests.post(
            f"{fronts.serve.url}/invocations",
            data=json.dumps(sm_request()),
            headers={"Content-Type": "application/octet-stream"},
            timeout=10,
        )
    assert response.status_code == 200, response.text
    assert response.json() == EXPECTED


def test_octet_stream_that_is_not_v2_names_the_rule(fronts: Fronts) -> None:
    """Documented difference: 415 naming the rule, where Triton's frontend answers 500
    (its v2 parser's error: "Unable to parse 'inputs'")."""
    body = json.dumps({"instances": [[1] * 16]})
    ours, theirs = invoke_both(fronts, body, {"Content-Type": "application/octet-stream"})
    assert theirs.status_code == 500, theirs.text
    assert ours.status_code == 415, ours.text
    error = ours.json()["error"]
    assert "KServe v2" in error and "one BYTES input" in error and "application/json" in error


# --- a decoupled model on the infer route: Triton's frontend refuses it ("HTTP end point
# doesn't support models with decoupled transaction policy"); serve streams it, in the
# format the caller's Accept asks for.

STREAMED = {
    "inputs": [
        {"name": "PROMPT", "shape": [1, 1], "datatype": "BYTES", "data": ["hi"]},
        {"name": "STREAM", "shape": [1, 1], "datatype": "BOOL", "data": [True]},
    ],
    "parameters": {"REPETITION": 3},
}


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        ("text/event-stream", "text/event-stream; charset=utf-8"),
        ("application/jsonlines", "application/jsonlines"),
        ("*/*", "application/jsonlines"),
        (None, "application/jsonlines"),
    ],
)
@pytest.mark.parametrize("request_type", ["application/json", "application/octet-stream", None])
def test_a_decoupled_model_streams_in_the_format_asked(
    fronts: Fronts, accept: str | None, content_type: str, request_type: str | None
) -> None:
    headers = {"X-Amzn-SageMaker-Custom-Attributes": "target_model=mock_llm"}
    if accept:
        headers["Accept"] = accept
    if request_type:
        headers["Content-Type"] = request_type
    response = requests.post(
        f"{fronts.serve.url}/invocations", data=json.dumps(STREAMED), headers=headers, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == content_type
    if content_type.startswith("text/event-stream"):
        chunks = [e.removeprefix("data: ") for e in response.text.split("\n\n") if e]
    else:
        chunks = response.text.splitlines()
    assert [json.loads(chunk)["TEXT"] for chunk in chunks] == ["hi"] * 3


# --- the error statuses a client sees


def test_ping(fronts: Fronts) -> None:
    ours, theirs = fronts.both("GET", "/ping")
    assert ours.status_code == theirs.status_code == 200
    assert ours.content == b""


def test_a_wrong_input_name_is_400_with_tritons_reason(fronts: Fronts) -> None:
    body = sm_request()
    body["inputs"][1]["name"] = "INPUT7"
    ours, theirs = invoke_both(fronts, json.dumps(body), {"Content-Type": "application/json"})
    assert ours.status_code == theirs.status_code == 400, (ours.text, theirs.text)
    assert "INPUT7" in ours.json()["error"] and "INPUT7" in theirs.json()["error"]


@pytest.mark.parametrize("body", [b"{not json", b"dummy"], ids=["broken", "qa-dummy"])
def test_a_body_that_is_not_json_is_400(fronts: Fronts, body: bytes) -> None:
    """Documented difference: 400 naming the parse error, where Triton's frontend answers
    500 (NVIDIA's QA posts `--data-raw 'dummy'` and checks only that it is not 200)."""
    ours, theirs = invoke_both(fronts, body, {"Content-Type": "application/json"})
    assert theirs.status_code == 500, theirs.text
    assert ours.status_code == 400, ours.text
    assert "not valid JSON" in ours.json()["error"]


def test_get_invocations_is_405(fronts: Fronts) -> None:
    ours, theirs = fronts.both("GET", "/invocations")
    assert ours.status_code == theirs.status_code == 405


def test_unknown_routes(fronts: Fronts) -> None:
    """Documented difference: 404 naming the routes, where Triton's frontend answers 400."""
    ours, theirs = fronts.both("POST", "/v2/models/sm_model/infer", json=sm_request())
    assert theirs.status_code == 400
    assert ours.status_code == 404
    assert "/invocations" in ours.json()["error"]


def test_an_empty_body_is_400(fronts: Fronts) -> None:
    ours, theirs = invoke_both(fronts, b"", {"Content-Type": "application/json"})
    assert ours.status_code == theirs.status_code == 400, (ours.text, theirs.text)
    assert ours.json()["error"]


def test_the_binary_type_without_its_header_size_is_400(fronts: Fronts) -> None:
    """Documented difference: Triton's frontend reads that spelling as v2 JSON; serve
    answers 400, as for every other spelling of the binary type but the one it takes."""
    ours, theirs = invoke_both(fronts, json.dumps(sm_request()), {"Content-Type": BINARY_TYPE})
    assert theirs.status_code == 200, theirs.text
    assert ours.status_code == 400, ours.text
    assert "json-header-size" in ours.json()["error"]


# --- boto3, as the notebooks call it


def test_boto3_invoke_endpoint_as_the_notebooks_do(fronts: Fronts) -> None:
    """`invoke_endpoint(ContentType="application/octet-stream", Body=json.dumps(v2))`, then
    binary+json with the answer's header length read from `response["ContentType"]`."""
    body, header_length = client_request(True, True)
    answers = []
    for url in (fronts.serve.url, fronts.reference):
        client = sagemaker_runtime(url, "/invocations")
        octet = client.invoke_endpoint(
            EndpointName="e", ContentType="application/octet-stream", Body=json.dumps(sm_request())
        )
        assert json.loads(octet["Body"].read()) == EXPECTED
        binary = client.invoke_endpoint(
            EndpointName="e",
            ContentType=f"{BINARY_TYPE};json-header-size={header_length}",
            Body=body,
        )
        prefix = f"{BINARY_TYPE};json-header-size="
        result = httpclient.InferenceServerClient.parse_response_body(
            binary["Body"].read(), header_length=int(binary["ContentType"][len(prefix) :])
        )
        answers.append([result.as_numpy(n).tolist() for n in ("OUTPUT0", "OUTPUT1")])
    assert answers[0] == answers[1]
