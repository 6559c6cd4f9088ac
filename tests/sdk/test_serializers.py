"""The SDK's serializers post to a running serve; its deserializers read the answers.

One SDK process runs every case (tests/sdk/serializers_client.py) against an
endpoint the stand-in passes to `serve` on the payload models (ncf_food, the
default; echo, one BYTES input); the cases here check what each returned.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ServeProcess
from tests.front.test_front import ncf_request
from tests.payloads.conftest import start_payload_server
from tests.sdk.conftest import create_endpoint, run_container, run_in_sdk

CLIENT = Path(__file__).with_name("serializers_client.py")
# The bytes the client sends (serializers_client.RAW).
RAW = b"\x89PNG\r\n\x1a\n\xff\x00raw"


@pytest.fixture(scope="module")
def sdk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    server = start_payload_server(tmp_path_factory.mktemp("sdk"))
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def scores(sdk_server: ServeProcess) -> list[float]:
    """ncf_food's scores for user 42 and items 7 and 19, from the native path."""
    response = requests.post(
        f"{sdk_server.url}/invocations", json=ncf_request([42, 42], [7, 19]), timeout=10
    )
    return response.json()["outputs"][0]["data"]


@pytest.fixture(scope="module")
def results(
    sdk_server: ServeProcess,
    fake_aws_url: str,
    sdk_python: Path,
    sdk_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, dict]:
    """What each case of serializers_client.py returned, from one SDK process."""
    tmp_path = tmp_path_factory.mktemp("sdk-client")
    name = f"sdk-{uuid.uuid4().hex[:8]}"
    run_container(fake_aws_url, sdk_server.url)
    create_endpoint(fake_aws_url, name)
    data_file = tmp_path / "upload.bin"
    data_file.write_bytes(b"file bytes")
    output = run_in_sdk(sdk_python, [str(CLIENT), name, str(data_file)], sdk_env, tmp_path)
    # The SDK logs its configuration to stdout; the client's answer is the last line.
    return json.loads(output.splitlines()[-1])


def close(values: list[float], expected: list[float]) -> bool:
    return len(values) == len(expected) and all(
        abs(a - b) < 1e-6 for a, b in zip(values, expected, strict=True)
    )


def test_every_sdk_serializer_round_trips_or_is_refused_by_name(
    results: dict[str, dict], scores: list[float]
) -> None:
    # Records of (user_id, item_id) in CSV, JSON, .npy, JSON Lines and torch: ncf_food's scores.
    assert [float(row[0]) for row in results["csv-rows"]["value"]] == pytest.approx(scores)
    assert [float(row[0]) for row in results["csv-numpy"]["value"]] == pytest.approx(scores)
    assert results["csv-dataframe"]["type"] == "DataFrame"
    assert close(results["csv-dataframe"]["value"]["predictions"], scores)
    assert close(results["json-instances"]["value"]["predictions"], scores)
    assert close(results["json-numpy"]["value"]["predictions"], scores)
    v2 = results["json-v2"]["value"]
    assert v2["model_name"] == "ncf_food" and close(v2["outputs"][0]["data"], scores)
    for case in ("npy", "npy-list"):
        assert results[case]["type"] == "ndarray" and results[case]["dtype"] == "float32"
        assert close([row[0] for row in results[case]["value"]], scores)
    assert close(results["jsonlines"]["value"], scores)
    assert results["torch"]["type"] == "Tensor" and results["torch"]["dtype"] == "torch.float32"
    assert close([row[0] for row in results["torch"]["value"]], scores)
    stream = results["stream"]
    assert stream["content_type"] == "application/json"
    assert close(json.loads(stream["value"])["predictions"], scores)

    # Bytes, images, text and files for a model with one BYTES input (echo): the bytes
    # reach the model as sent ("echo:" + them, not UTF-8, so in base64).
    echoed = {"predictions": [{"b64": base64.b64encode(b"echo:" + RAW).decode()}]}
    assert json.loads(results["identity-bytes"]["value"]) == echoed
    assert results["identity-image"]["value"] == echoed
    assert json.loads(results["string"]["value"]) == {"predictions": ["echo:hello"]}
    assert results["string-csv-answer"]["value"] == [["echo:hello"]]
    assert results["data-file"]["value"] == {"predictions": ["echo:file bytes"]}

    # Formats a Triton model has no use for: 415 naming what the endpoint reads (and 406
    # naming what it writes), which reaches the SDK as ModelError with serve's status and body.
    for case, sent in (
        ("sparse-npz", "application/x-npz"),
        ("libsvm", "text/libsvm"),
        ("recordio", "application/x-recordio-protobuf"),
    ):
        assert results[case]["error"] == "ModelError" and results[case]["status"] == 415, results[
            case
        ]
        message = json.loads(results[case]["message"])["error"]
        assert sent in message and "Serializer" in message and "send one of: " in message
    answer = results["recordio-answer"]
    assert answer["error"] == "ModelError" and answer["status"] == 406
    assert "application/x-recordio-protobuf" in answer["message"]
    assert "text/csv" in answer["message"]


def test_what_the_sdk_sends_is_what_serve_reads(results: dict[str, dict]) -> None:
    # The SDK's own content types, as sent: each is one serve reads (or refuses by name).
    sent = {case: result["sent"]["content_type"] for case, result in results.items()}
    assert sent["torch"] == "tensor/pt" and sent["data-file"] == "file-path/raw-bytes"
    assert sent["jsonlines"] == "application/jsonlines" and sent["npy"] == "application/x-npy"
    assert results["torch"]["sent"]["accept"] == ["tensor/pt"]
