"""smtriton invoke: what reaches the endpoint, and what the user gets back.

The fake runtime answers with a JSON echo of the request it received (see
fake_aws.py), so these tests see the headers SageMaker would pass on.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from smtriton.invoke import MAX_PAYLOAD_BYTES

from tests.build.conftest import CliResult, create_fake_endpoint

Smtriton = Callable[..., CliResult]

pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.fixture(scope="module")
def endpoint(fake_aws_url: str) -> str:
    """One InService endpoint for the module, made directly through the fake's API."""
    container = {"Image": "image", "Mode": "MultiModel", "ModelDataUrl": "s3://b-1/p/"}
    return create_fake_endpoint(fake_aws_url, f"invoke-{uuid.uuid4().hex[:8]}", container)


def echo(result: CliResult) -> dict:
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_invoke_sends_body_and_headers(smtriton: Smtriton, endpoint: str) -> None:
    body = '{"inputs": [{"name": "user_id", "shape": [1, 1], "datatype": "INT64", "data": [7]}]}'
    result = smtriton(
        "invoke",
        "--endpoint-name",
        endpoint,
        "--body",
        body,
        "--accept",
        "application/json",
        "--custom-attributes",
        "trace-id=abc",
    )
    assert echo(result) == {
        "endpoint": endpoint,
        "body": body,
        "content_type": "application/json",
        "accept": "application/json",
        "target_model": None,
        "custom_attributes": "trace-id=abc",
        "inference_component": None,
        "streaming": False,
    }
    assert "content type: application/json" in result.err


def test_invoke_names_the_target_model_of_a_multi_model_endpoint(
    smtriton: Smtriton, endpoint: str, tmp_path: Path
) -> None:
    payload = tmp_path / "request.bin"
    payload.write_bytes(b"\x00binary\x01")
    result = smtriton(
        "invoke",
        "--endpoint-name",
        endpoint,
        "--body-file",
        str(payload),
        "--content-type",
        "application/vnd.sagemaker-triton.binary+json;json-header-size=0",
        "--target-model",
        "ncf_food.tar.gz",
    )
    sent = echo(result)
    assert sent["target_model"] == "ncf_food.tar.gz"
    assert sent["content_type"] == "application/vnd.sagemaker-triton.binary+json;json-header-size=0"
    assert sent["body"] == "\x00binary\x01"


def test_invoke_reads_the_body_from_stdin_and_writes_to_a_file(
    smtriton: Smtriton, endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'{"from": "stdin"}')))
    output = tmp_path / "response.json"
    result = smtriton(
        "invoke", "--endpoint-name", endpoint, "--body-file", "-", "--output", str(output)
    )
    assert result.code == 0, result.err
    assert result.out == ""
    assert json.loads(output.read_text())["body"] == '{"from": "stdin"}'


def test_streaming_reassembles_the_payload_parts(smtriton: Smtriton, endpoint: str) -> None:
    result = smtriton(
        "invoke", "--endpoint-name", endpoint, "--body", '{"prompt": "hi"}', "--stream"
    )
    sent = echo(result)
    assert sent["streaming"] is True
    assert sent["body"] == '{"prompt": "hi"}'


def test_streaming_refuses_a_target_model(smtriton: Smtriton, endpoint: str) -> None:
    result = smtriton(
        "invoke",
        "--endpoint-name",
        endpoint,
        "--body",
        "{}",
        "--stream",
        "--target-model",
        "a.tar.gz",
    )
    assert result.code == 1
    assert "streaming does not take --target-model" in result.err


def test_a_container_error_shows_the_containers_status_and_message(
    smtriton: Smtriton, endpoint: str
) -> None:
    result = smtriton("invoke", "--endpoint-name", endpoint, "--body", "MODEL_ERROR")
    assert result.code == 1
    assert (
        "smtriton invoke: error: the container answered HTTP 400: "
        '{"error": "input user_id is missing"}'
    ) in result.err
    assert f"/aws/sagemaker/Endpoints/{endpoint}" in result.err
    assert "Traceback" not in result.err


def test_an_unknown_endpoint_is_named_in_the_error(smtriton: Smtriton) -> None:
    result = smtriton("invoke", "--endpoint-name", "no-such-endpoint", "--body", "{}")
    assert result.code == 1
    assert "InvokeEndpoint failed: ValidationError: Endpoint no-such-endpoint" in result.err


def test_an_oversized_body_is_refused_before_sending(
    smtriton: Smtriton, endpoint: str, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (MAX_PAYLOAD_BYTES + 1))
    result = smtriton("invoke", "--endpoint-name", endpoint, "--body-file", str(big))
    assert result.code == 1
    assert f"InvokeEndpoint takes at most {MAX_PAYLOAD_BYTES}" in result.err
