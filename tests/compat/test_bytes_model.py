"""A model whose only input is BYTES: v2 JSON or raw bytes, by the body, on both fronts.

AWS's GPU multi-model notebooks (the SDXL and conda-setup models) send such a
model `ContentType="application/octet-stream"` with `Body=json.dumps(v2)`;
Triton's frontend reads every type but binary+json as v2 JSON. serve also
gives such a model raw bytes (an image, a text) as its input. The rule (README,
Payloads): a body that is a KServe v2 request is one, whatever its type; any
other body is the input's bytes; `; format=raw` on the type makes even a v2
request the bytes. Triton's frontend cannot read the raw cases at all: there
serve answers 200 where it answers 500, on purpose.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import requests

from tests.compat.conftest import Fronts, v2_json

V2_TEXT = {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["hello"]}]}


@pytest.fixture(scope="module")
def fronts(fronts_factory: Callable[..., Fronts]) -> Fronts:
    return fronts_factory(("text_model",), SAGEMAKER_TRITON_DEFAULT_MODEL_NAME="text_model")


def invoke_both(
    fronts: Fronts, body: bytes | str, content_type: str
) -> tuple[requests.Response, ...]:
    return fronts.both("POST", "/invocations", data=body, headers={"Content-Type": content_type})


@pytest.mark.parametrize("content_type", ["application/octet-stream", "text/plain", "image/png"])
def test_a_v2_request_is_read_as_one_whatever_its_type(fronts: Fronts, content_type: str) -> None:
    ours, theirs = invoke_both(fronts, json.dumps(V2_TEXT), content_type)
    assert theirs.status_code == ours.status_code == 200, (ours.text, theirs.text)
    assert v2_json(ours) == v2_json(theirs)
    assert ours.json()["outputs"][0]["data"] == ["echo:hello"]


@pytest.mark.parametrize(
    "body",
    [b"hello", b'{"prompt": "a JSON text, not a v2 request"}', b"\x89PNG\r\n\x1a\n\x00\xff"],
    ids=["text", "json-text", "image"],
)
def test_other_bodies_are_the_inputs_bytes(fronts: Fronts, body: bytes) -> None:
    """Documented difference: Triton's frontend cannot read these (500); serve gives them
    to the model as they are."""
    ours, theirs = invoke_both(fronts, body, "application/octet-stream")
    assert theirs.status_code == 500, theirs.text
    assert ours.status_code == 200, ours.text
    (prediction,) = ours.json()["predictions"]
    try:
        assert prediction == "echo:" + body.decode()
    except UnicodeDecodeError:
        assert prediction["b64"]


def test_format_raw_makes_a_v2_request_the_inputs_bytes(fronts: Fronts) -> None:
    """serve only (Triton's frontend ignores the parameter and reads v2)."""
    text = json.dumps(V2_TEXT)
    ours, theirs = invoke_both(fronts, text, "application/octet-stream; format=raw")
    assert theirs.status_code == 200, theirs.text
    assert ours.status_code == 200, ours.text
    assert ours.json() == {"predictions": [f"echo:{text}"]}


def test_a_refused_v2_request_says_which_rule_applied(fronts: Fronts) -> None:
    body = json.dumps(
        {"inputs": [{"name": "PROMPT", "shape": [1, 1], "datatype": "BYTES", "data": ["x"]}]}
    )
    ours, theirs = invoke_both(fronts, body, "application/octet-stream")
    assert theirs.status_code == ours.status_code == 400, (ours.text, theirs.text)
    error = ours.json()["error"]
    assert "PROMPT" in error  # Triton's own reason
    assert "read this application/octet-stream body as a KServe v2 request" in error
    assert "format=raw" in error


def test_a_v2_request_missing_names_is_400_not_the_inputs_bytes(fronts: Fronts) -> None:
    """Shaped like v2 but not v2: given to the model as bytes it would answer 200 with
    the wrong thing. Documented difference: 400 naming both readings, where Triton's
    frontend answers 500 (`Unable to parse 'name'`)."""
    body = json.dumps({"inputs": [{"shape": [1, 1], "datatype": "BYTES", "data": ["x"]}]})
    ours, theirs = invoke_both(fronts, body, "application/octet-stream")
    assert theirs.status_code == 500, theirs.text
    assert ours.status_code == 400, ours.text
    error = ours.json()["error"]
    assert "shaped like a KServe v2 request" in error and "format=raw" in error
