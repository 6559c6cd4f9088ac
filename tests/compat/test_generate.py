"""SAGEMAKER_TRITON_INFERENCE_TYPE=generate and generate_stream, as NVIDIA's QA calls them.

QA (`sagemaker_generate_test.py`, `sagemaker_generate_stream_test.py`) posts
`{"PROMPT": ..., "STREAM": ..., "REPETITION": n}` with no Content-Type to the
decoupled `mock_llm`, the stream with `Accept: text/event-stream`, and expects
`text/event-stream; charset=utf-8` with one `data:` event per response.
Triton 2.51's SageMaker frontend has no inference types (2.56 added them, and
its handler calls Triton's generate routes), so the oracle here is Triton's own
`/v2/models/mock_llm/generate[_stream]` on the same server.

Streaming clients send other Accept values too (boto3's
InvokeEndpointWithResponseStream sends whatever the caller sets; LangChain and
LiteLLM send `application/jsonlines` or `*/*`): each gets the format it asked for.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.compat.conftest import Fronts

QA_STREAM = {"PROMPT": ["hello world"], "STREAM": True, "REPETITION": 3}
QA_GENERATE = {"PROMPT": "hello world", "STREAM": False}


@pytest.fixture(scope="module")
def stream_fronts(fronts_factory: Callable[..., Fronts]) -> Fronts:
    return fronts_factory(
        ("mock_llm",),
        SAGEMAKER_TRITON_DEFAULT_MODEL_NAME="mock_llm",
        SAGEMAKER_TRITON_INFERENCE_TYPE="generate_stream",
    )


@pytest.fixture(scope="module")
def generate_fronts(fronts_factory: Callable[..., Fronts]) -> Fronts:
    return fronts_factory(
        ("mock_llm",),
        SAGEMAKER_TRITON_DEFAULT_MODEL_NAME="mock_llm",
        SAGEMAKER_TRITON_INFERENCE_TYPE="generate",
    )


def events(text: str) -> list[dict[str, Any]]:
    """Server-sent events' data, each a JSON object; every event well formed."""
    assert text.endswith("\n\n"), text
    found = []
    for event in text.split("\n\n")[:-1]:
        assert event.startswith("data: "), event
        found.append(json.loads(event.removeprefix("data: ")))
    return found


def without_model(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in ("model_name", "model_version")}


def triton_stream(fronts: Fronts, body: dict[str, Any]) -> list[dict[str, Any]]:
    """What Triton's generate_stream route answers (the newer frontend's own handler)."""
    response = requests.post(
        f"http://{fronts.triton_http}/v2/models/mock_llm/generate_stream", json=body, timeout=60
    )
    assert response.status_code == 200, response.text
    return events(response.text)


@pytest.mark.parametrize("accept", ["text/event-stream", "*/*", None])
def test_generate_stream_answers_events(stream_fronts: Fronts, accept: str | None) -> None:
    headers = {"Accept": accept} if accept else {}
    response = requests.post(
        f"{stream_fronts.serve.url}/invocations",
        data=json.dumps(QA_STREAM),
        headers=headers,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    expected = triton_stream(stream_fronts, QA_STREAM)
    assert len(expected) == 3
    assert events(response.text) == expected


@pytest.mark.parametrize("accept", ["application/jsonlines", "application/x-ndjson"])
def test_generate_stream_answers_json_lines_when_asked(stream_fronts: Fronts, accept: str) -> None:
    response = requests.post(
        f"{stream_fronts.serve.url}/invocations",
        data=json.dumps(QA_STREAM),
        headers={"Accept": accept},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/jsonlines"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines == [without_model(e) for e in triton_stream(stream_fronts, QA_STREAM)]


def test_generate_answers_json(generate_fronts: Fronts) -> None:
    response = requests.post(
        f"{generate_fronts.serve.url}/invocations", data=json.dumps(QA_GENERATE), timeout=60
    )
    theirs = requests.post(
        f"http://{generate_fronts.triton_http}/v2/models/mock_llm/generate",
        json=QA_GENERATE,
        timeout=60,
    )
    assert response.status_code == theirs.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == theirs.json()
    assert response.json()["TEXT"] == "hello world"


def test_a_generate_that_needs_several_responses_is_400(generate_fronts: Fronts) -> None:
    """Documented difference: Triton 2.51's generate route answers 200 with an error (newer
    Tritons answer 400); serve answers the 400."""
    body = {"PROMPT": "hello world", "STREAM": True, "REPETITION": 2}
    response = requests.post(
        f"{generate_fronts.serve.url}/invocations", data=json.dumps(body), timeout=60
    )
    theirs = requests.post(
        f"http://{generate_fronts.triton_http}/v2/models/mock_llm/generate", json=body, timeout=60
    )
    assert theirs.status_code == 200 and set(theirs.json()) == {"error"}, theirs.text
    assert response.status_code == 400, response.text
    assert response.json() == theirs.json()
