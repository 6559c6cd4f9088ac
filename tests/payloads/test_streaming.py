"""Decoupled models stream to /invocations; the generate inference types work on Triton 2.51.

The `stream` model sends one token every TOKEN_SECONDS; the tests read the
chunks as they arrive and check their arrival times, so an answer buffered
until the end fails them.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import ServeProcess
from tests.payloads.conftest import TOKEN_SECONDS, start_payload_server


def stream_chunks(
    server: ServeProcess, body: object, headers: dict[str, str]
) -> tuple[http.client.HTTPResponse, list[tuple[float, bytes]]]:
    """POST /invocations and read the answer chunk by chunk: (seconds since sent, chunk)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    started = time.monotonic()
    connection.request(
        "POST",
        "/invocations",
        body=json.dumps(body),
        headers={"Content-Type": "application/json", **headers},
    )
    response = connection.getresponse()
    chunks = []
    while chunk := response.read1(65536):
        chunks.append((time.monotonic() - started, chunk))
    connection.close()
    return response, chunks


def assert_streamed(chunks: list[tuple[float, bytes]], tokens: int) -> None:
    """Chunks came as the model made them, not all at the end."""
    assert len(chunks) >= tokens, chunks
    first, last = chunks[0][0], chunks[-1][0]
    # The first token is ready after one interval; the last after `tokens` intervals.
    assert first < TOKEN_SECONDS * 2.5, chunks
    assert last - first > TOKEN_SECONDS * (tokens - 1) * 0.6, chunks


def test_decoupled_model_streams_json_lines(payload_server: ServeProcess) -> None:
    response, chunks = stream_chunks(
        payload_server,
        {"inputs": "hi", "parameters": {"max_tokens": 4, "suffix": "!"}},
        {"X-Amzn-SageMaker-Custom-Attributes": "target_model=stream"},
    )
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.getheader("Content-Type") == "application/jsonlines"
    assert_streamed(chunks, 4)
    lines = b"".join(chunk for _, chunk in chunks).decode().splitlines()
    # max_tokens names an input: it became one; suffix did not: a request parameter.
    assert [json.loads(line) for line in lines] == [{"text_output": f"hi-{i}!"} for i in range(4)]


def test_decoupled_model_streams_server_sent_events(payload_server: ServeProcess) -> None:
    v2 = {
        "inputs": [
            {"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["yo"]},
            {"name": "max_tokens", "shape": [1], "datatype": "INT32", "data": [3]},
        ]
    }
    response, chunks = stream_chunks(
        payload_server,
        v2,
        {
            "X-Amzn-SageMaker-Custom-Attributes": "target_model=stream",
            "Accept": "text/event-stream",
        },
    )
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/event-stream; charset=utf-8"
    assert_streamed(chunks, 3)
    events = b"".join(chunk for _, chunk in chunks).decode().strip().split("\n\n")
    assert [json.loads(e.removeprefix("data: "))["text_output"] for e in events] == [
        "yo-0",
        "yo-1",
        "yo-2",
    ]


def test_stream_errors_before_the_first_chunk_are_json(payload_server: ServeProcess) -> None:
    response = requests.post(
        f"{payload_server.url}/invocations",
        json={"inputs": ["a", "b"]},
        headers={"X-Amzn-SageMaker-Custom-Attributes": "target_model=stream"},
        timeout=30,
    )
    assert response.status_code == 400
    assert "one record per request" in response.json()["error"]


def test_a_model_refusing_before_its_first_response_answers_its_error(
    payload_server: ServeProcess,
) -> None:
    # Triton answers 400 with the refusal as a server-sent event; the caller gets
    # the model's own message as JSON, not the event's framing.
    response = requests.post(
        f"{payload_server.url}/invocations",
        json={"inputs": "refuse"},
        headers={"X-Amzn-SageMaker-Custom-Attributes": "target_model=stream"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"error": "the prompt was refused"}


def stream_model_server(
    factory: pytest.TempPathFactory, inference_type: str
) -> Iterator[ServeProcess]:
    """`serve` defaulting to the decoupled `stream` model, on one inference type."""
    server = start_payload_server(
        factory.mktemp(inference_type),
        ncf=False,
        SAGEMAKER_TRITON_DEFAULT_MODEL_NAME="stream",
        SAGEMAKER_TRITON_INFERENCE_TYPE=inference_type,
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def generate_stream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    yield from stream_model_server(tmp_path_factory, "generate_stream")


def test_generate_stream_sends_server_sent_events_as_they_come(
    generate_stream_server: ServeProcess,
) -> None:
    response, chunks = stream_chunks(
        generate_stream_server, {"text_input": "go", "max_tokens": 3}, {}
    )
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/event-stream")
    assert_streamed(chunks, 3)
    text = b"".join(chunk for _, chunk in chunks).decode()
    assert [
        json.loads(e.removeprefix("data: "))["text_output"] for e in text.strip().split("\n\n")
    ] == [
        "go-0",
        "go-1",
        "go-2",
    ]
    # Simple shapes are turned into the generate extension's JSON.
    _, chunks = stream_chunks(
        generate_stream_server, {"inputs": "hey", "parameters": {"max_tokens": 2}}, {}
    )
    assert b"hey-1" in b"".join(chunk for _, chunk in chunks)


def test_generate_stream_errors_are_4xx_with_json(generate_stream_server: ServeProcess) -> None:
    for body in ({"text_input": "go", "max_tokens": "many"}, {"nothing": 1}):
        response = requests.post(f"{generate_stream_server.url}/invocations", json=body, timeout=30)
        assert response.status_code == 400, response.text
        assert response.json()["error"]
    refused = requests.post(
        f"{generate_stream_server.url}/invocations", json={"text_input": "refuse"}, timeout=30
    )
    assert refused.status_code == 400, refused.text
    assert refused.json() == {"error": "the prompt was refused"}


@pytest.fixture(scope="module")
def generate_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    yield from stream_model_server(tmp_path_factory, "generate")


def test_generate_answers_one_response_and_refuses_several(generate_server: ServeProcess) -> None:
    url = f"{generate_server.url}/invocations"
    one = requests.post(url, json={"text_input": "a", "max_tokens": 1}, timeout=30)
    assert one.status_code == 200, one.text
    assert one.json()["text_output"] == "a-0"
    # Triton 2.51 answers this with 200 and an error; newer Tritons with 400.
    several = requests.post(url, json={"text_input": "a", "max_tokens": 2}, timeout=30)
    assert several.status_code == 400, several.text
    assert "exactly 1 response" in several.json()["error"]
    echo = requests.post(
        url,
        json={"INPUT": "x"},
        headers={"X-Amzn-SageMaker-Custom-Attributes": "target_model=echo"},
        timeout=30,
    )
    assert echo.status_code == 200, echo.text
    assert echo.json()["OUTPUT"] == "echo:x"
