"""Multi-model endpoints as NVIDIA's QA and AWS's GPU multi-model notebooks drive them.

One serve with SAGEMAKER_MULTI_MODEL=true, Triton's SageMaker frontend on the
same Triton (in explicit model control, as NVIDIA's image runs it). Each front
loads its own copy of a model, under its own name (Triton's frontend names its
Triton model after the request, so the copies must differ), and every call is
made to both: load, load again, list, describe, invoke (v2 JSON as
`application/json` and as `application/octet-stream`, binary+json, with
`X-Amzn-SageMaker-Target-Model`), unload, and the statuses NVIDIA's QA
(`sagemaker_multi_model_test.py`) checks: 200, 409, 404.

The sequence is one story (load, use, unload) in the order QA runs it, so the
tests share one endpoint and run in file order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

from tests.compat.conftest import BINARY_TYPE, Fronts, sagemaker_runtime, sm_request, v2_json

# Each front's name for each model: (serve's, Triton's frontend's).
NAMES = {
    "sm_model": ("sm_mme_model_1", "ref_sm_mme_model_1"),
    "identity": ("sm_mme_model_2", "ref_sm_mme_model_2"),
    "text_model": ("setup_conda", "ref_setup_conda"),
    "mock_llm": ("llm", "ref_llm"),
}


@pytest.fixture(scope="module")
def fronts(fronts_factory: Callable[..., Fronts]) -> Fronts:
    return fronts_factory((), SAGEMAKER_MULTI_MODEL="true")


@pytest.fixture(scope="module")
def urls(fronts: Fronts) -> dict[str, tuple[str, str]]:
    """Each model's url for each front, a model folder inside (AWS's notebooks' tarballs
    hold one). QA's flat layout (the model's own files in the url) works with Triton 2.51's
    frontend only under the real /opt/ml/models, which tests do not touch; serve's own
    tests load it (tests/multi_model/test_multi_model.py)."""
    return {
        model: (
            fronts.upload(model, f"{names[0]}-key", names[0]),
            fronts.upload(model, f"{names[1]}-key", names[1]),
        )
        for model, names in NAMES.items()
    }


def each(fronts: Fronts) -> list[str]:
    return [fronts.serve.url, fronts.reference]


def target(model: str, side: int) -> dict[str, str]:
    """SageMaker's X-Amzn-SageMaker-Target-Model (invoke_endpoint's TargetModel), which it
    sends on every load, invoke and unload. Triton's frontend names the Triton model after
    it; serve only logs it. NVIDIA's QA calls without it: so do the tests of sm_model and
    identity; the text model's go as SageMaker sends them."""
    if model != "text_model":
        return {}
    return {"X-Amzn-SageMaker-Target-Model": f"{NAMES[model][side]}.tar.gz"}


def load(fronts: Fronts, model: str, urls: dict[str, tuple[str, str]]) -> list:
    return [
        requests.post(
            f"{base}/models",
            data=json.dumps({"model_name": NAMES[model][side], "url": urls[model][side]}),
            headers={"Content-Type": "application/json", **target(model, side)},
            timeout=120,
        )
        for side, base in enumerate(each(fronts))
    ]


def invoke(fronts: Fronts, model: str, body: bytes | str, **headers: str) -> list:
    return [
        requests.post(
            f"{base}/models/{NAMES[model][side]}/invoke",
            data=body,
            headers={**headers, **target(model, side)},
            timeout=60,
        )
        for side, base in enumerate(each(fronts))
    ]


def test_load_then_load_again(fronts: Fronts, urls: dict[str, tuple[str, str]]) -> None:
    for model in NAMES:
        ours, theirs = load(fronts, model, urls)
        assert theirs.status_code == ours.status_code == 200, (model, ours.text, theirs.text)
    ours, theirs = load(fronts, "sm_model", urls)
    assert theirs.status_code == ours.status_code == 409, (ours.text, theirs.text)
    assert "already loaded" in ours.json()["error"]


def test_list_and_describe(fronts: Fronts, urls: dict[str, tuple[str, str]]) -> None:
    """modelUrl is the url the load named, on both (AWS's contract); for QA's flat layout
    Triton's frontend answers the folder above it (QA expects `url.rstrip("/model")`).

    Documented difference: Triton's frontend lists a model loaded with
    X-Amzn-SageMaker-Target-Model (as SageMaker loads every model) as `{}`: it asks
    Triton whether the model is ready by the load's model_name, while the Triton model
    is named after the header. serve lists every loaded model.
    """
    answers = [requests.get(f"{base}/models", timeout=10) for base in each(fronts)]
    for side, answer in enumerate(answers):
        assert answer.status_code == 200
        expected = [
            {"modelName": NAMES[m][side], "modelUrl": urls[m][side]}
            if side == 0 or not target(m, side)
            else {}
            for m in NAMES
        ]
        assert sorted(answer.json()["models"], key=json.dumps) == sorted(expected, key=json.dumps)
    for model in NAMES:
        for side, base in enumerate(each(fronts)):
            answer = requests.get(f"{base}/models/{NAMES[model][side]}", timeout=10)
            assert answer.status_code == 200
            assert answer.json() == {"modelName": NAMES[model][side], "modelUrl": urls[model][side]}
    for base in each(fronts):
        assert requests.get(f"{base}/models/sm_non_loaded_model", timeout=10).status_code == 404


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json"},  # QA
        {"Content-Type": "application/octet-stream"},  # AWS's GPU MME notebooks
        {},
    ],
    ids=["json", "octet-stream", "none"],
)
def test_invoke_v2_json(
    fronts: Fronts, urls: dict[str, tuple[str, str]], headers: dict[str, str]
) -> None:
    ours, theirs = invoke(fronts, "sm_model", json.dumps(sm_request()), **headers)
    assert ours.status_code == theirs.status_code == 200, (ours.text, theirs.text)
    assert v2_json(ours) == v2_json(theirs)
    assert ours.json()["model_name"] == NAMES["sm_model"][0]
    assert ours.json()["outputs"][0]["data"] == list(range(0, 32, 2))


def test_invoke_binary_in_and_out(fronts: Fronts, urls: dict[str, tuple[str, str]]) -> None:
    data = np.arange(8, dtype=np.float32).reshape(1, 8)
    tensor = httpclient.InferInput("INPUT0", [1, 8], "FP32")
    tensor.set_data_from_numpy(data, binary_data=True)
    body, size = httpclient.InferenceServerClient.generate_request_body(
        [tensor], outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)]
    )
    answers = invoke(
        fronts, "identity", body, **{"Content-Type": f"{BINARY_TYPE};json-header-size={size}"}
    )
    arrays: list[Any] = []
    for answer in answers:
        assert answer.status_code == 200, answer.text
        prefix = f"{BINARY_TYPE};json-header-size="
        assert answer.headers["Content-Type"].startswith(prefix)
        header = int(answer.headers["Content-Type"].removeprefix(prefix))
        result = httpclient.InferenceServerClient.parse_response_body(
            answer.content, header_length=header
        )
        arrays.append(result.as_numpy("OUTPUT0").tolist())
    assert arrays[0] == arrays[1] == data.tolist()


def test_a_bytes_model_takes_v2_json_as_octet_stream(
    fronts: Fronts, urls: dict[str, tuple[str, str]]
) -> None:
    """AWS's SDXL notebook warms its conda-setup model (one BYTES input) this way, naming
    the tarball (TargetModel)."""
    body = {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["hi"]}]}
    ours, theirs = invoke(
        fronts, "text_model", json.dumps(body), **{"Content-Type": "application/octet-stream"}
    )
    assert ours.status_code == theirs.status_code == 200, (ours.text, theirs.text)
    assert v2_json(ours) == v2_json(theirs)
    assert ours.json()["outputs"][0]["data"] == ["echo:hi"]


def test_boto3_with_target_model(fronts: Fronts, urls: dict[str, tuple[str, str]]) -> None:
    """`invoke_endpoint(TargetModel=..., ContentType="application/octet-stream",
    Body=json.dumps(v2))`, as AWS's GPU multi-model notebooks call it; SageMaker routes
    it to /models/NAME/invoke."""
    body = {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["b"]}]}
    answers = []
    for side, base in enumerate(each(fronts)):
        name = NAMES["text_model"][side]
        client = sagemaker_runtime(base, f"/models/{name}/invoke")
        answer = client.invoke_endpoint(
            EndpointName="mme",
            TargetModel=f"{name}.tar.gz",
            ContentType="application/octet-stream",
            Body=json.dumps(body),
        )
        answers.append(
            {k: v for k, v in json.loads(answer["Body"].read()).items() if k != "model_name"}
        )
    assert answers[0] == answers[1]
    assert answers[0]["outputs"][0]["data"] == ["echo:b"]


def test_a_decoupled_model_streams(fronts: Fronts, urls: dict[str, tuple[str, str]]) -> None:
    """Documented difference: Triton's frontend refuses a decoupled model (400); serve
    streams its responses (JSON Lines here, events with Accept: text/event-stream)."""
    body = {
        "inputs": [
            {"name": "PROMPT", "shape": [1, 1], "datatype": "BYTES", "data": ["hey"]},
            {"name": "STREAM", "shape": [1, 1], "datatype": "BOOL", "data": [True]},
        ],
        "parameters": {"REPETITION": 2},
    }
    ours, theirs = invoke(fronts, "mock_llm", json.dumps(body))
    assert theirs.status_code == 400, theirs.text
    assert "decoupled" in theirs.json()["error"]
    assert ours.status_code == 200, ours.text
    assert ours.headers["Content-Type"] == "application/jsonlines"
    assert [json.loads(line)["TEXT"] for line in ours.text.splitlines()] == ["hey", "hey"]


def test_a_bytes_model_takes_raw_bytes_too(
    fronts: Fronts, urls: dict[str, tuple[str, str]]
) -> None:
    """Documented difference: Triton's frontend cannot read raw bytes (400 here, 500 on
    /invocations); serve gives them to the model (nginx tries Triton first on a
    multi-model endpoint, whose models it does not know, and the payload service
    answers its refusal)."""
    ours, theirs = invoke(
        fronts, "text_model", b"\x89PNG\r\n", **{"Content-Type": "application/octet-stream"}
    )
    assert theirs.status_code == 400, theirs.text
    assert ours.status_code == 200, ours.text
    assert ours.json() == {"predictions": [{"b64": "ZWNobzqJUE5HDQo="}]}


def test_unload_then_calls_are_404(fronts: Fronts, urls: dict[str, tuple[str, str]]) -> None:
    for model in NAMES:
        ours, theirs = (
            requests.delete(
                f"{base}/models/{NAMES[model][side]}", headers=target(model, side), timeout=120
            )
            for side, base in enumerate(each(fronts))
        )
        assert ours.status_code == theirs.status_code == 200, (ours.text, theirs.text)
    for base in each(fronts):
        assert requests.delete(f"{base}/models/sm_non_loaded_model", timeout=30).status_code == 404
        assert requests.get(f"{base}/models", timeout=10).json() == {"models": []}
    ours, theirs = invoke(fronts, "sm_model", json.dumps(sm_request()))
    assert ours.status_code == theirs.status_code == 404
