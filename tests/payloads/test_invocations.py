"""Content types, Accept, target_model and the error statuses, through real Triton.

Values are compared with what the native path (KServe v2 JSON, straight to
Triton) answers for the same inputs.
"""

from __future__ import annotations

import http.client
import io
import json

import numpy as np
import pytest
import requests

from tests.conftest import ServeProcess
from tests.front.test_front import BINARY_TYPE, binary_ncf_request, ncf_request

USERS = [42, 42, 7]
ITEMS = [7, 19, 301]


def invoke(
    server: ServeProcess,
    body: bytes | str,
    content_type: str,
    accept: str | None = None,
    target: str | None = None,
) -> requests.Response:
    headers = {"Content-Type": content_type}
    if accept is not None:
        headers["Accept"] = accept
    if target is not None:
        headers["X-Amzn-SageMaker-Custom-Attributes"] = f"target_model={target}"
    return requests.post(f"{server.url}/invocations", data=body, headers=headers, timeout=30)


def native_scores(server: ServeProcess, target: str | None = None) -> list[float]:
    response = invoke(
        server, json.dumps(ncf_request(USERS, ITEMS)), "application/json", None, target
    )
    assert response.status_code == 200, response.text
    return response.json()["outputs"][0]["data"]


@pytest.fixture(scope="module")
def expected(payload_server: ServeProcess) -> list[float]:
    return native_scores(payload_server)


def csv_scores(text: str) -> list[float]:
    return [float(line) for line in text.splitlines()]


ROWS = [[u, i] for u, i in zip(USERS, ITEMS, strict=True)]


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": ROWS},
        {"instances": ROWS},
        {"instances": [{"user_id": u, "item_id": i} for u, i in ROWS]},
        {"inputs": {"user_id": USERS, "item_id": ITEMS}},
        ROWS,
        # Not recognised by nginx's look at the first key: adapted after Triton refuses it.
        {"parameters": {}, "inputs": ROWS},
    ],
    ids=[
        "inputs-rows",
        "instances-rows",
        "instances-objects",
        "inputs-columns",
        "bare-array",
        "parameters-first",
    ],
)
def test_simple_json_shapes_match_the_native_path(
    payload_server: ServeProcess, expected: list[float], body: object
) -> None:
    response = invoke(payload_server, json.dumps(body), "application/json")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["predictions"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "body",
    [{"inputs": ROWS * 8}, {"instances": ROWS * 8}, ROWS * 8, {"inputs": [], "id": "x" * 80}],
    ids=["inputs-rows", "instances-rows", "bare-array", "empty-inputs"],
)
def test_simple_json_keeps_the_connection_open(payload_server: ServeProcess, body: object) -> None:
    """Simple shapes (valid or not) go to the payload service without a failed try in
    Triton first: nginx closes the client's connection after intercepting an upstream
    400, so a client sending simple JSON would reconnect on every request."""
    connection = http.client.HTTPConnection("127.0.0.1", payload_server.port, timeout=30)
    try:
        sockets = []
        for _ in range(3):
            connection.request(
                "POST", "/invocations", json.dumps(body), {"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            response.read()
            assert response.status in (200, 400)
            assert response.getheader("Content-Type") == "application/json"
            assert response.getheader("Connection") != "close"
            sockets.append(connection.sock)
        assert sockets[0] is not None and sockets.count(sockets[0]) == 3
    finally:
        connection.close()


def test_one_record_as_a_bare_list_or_an_object(
    payload_server: ServeProcess, expected: list[float]
) -> None:
    for body in ([42, 7], {"user_id": 42, "item_id": 7}):
        response = invoke(payload_server, json.dumps(body), "application/json")
        assert response.json()["predictions"] == pytest.approx(expected[:1], rel=1e-6)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("42,7\n42,19\n7,301\n", "text/csv"),
        ("user_id,item_id\n42,7\n42,19\n7,301\n", "text/csv"),
        ("item_id,user_id\r\n7,42\r\n19,42\r\n301,7\r\n", "text/csv; charset=utf-8"),
        ("a,b\n42,7\n42,19\n7,301", "text/csv; header=present"),
    ],
    ids=["no-header", "header", "header-reordered", "header-present"],
)
def test_csv_one_answer_line_per_record(
    payload_server: ServeProcess, expected: list[float], body: str, content_type: str
) -> None:
    response = invoke(payload_server, body, content_type)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "text/csv"
    assert csv_scores(response.text) == pytest.approx(expected, rel=1e-6)


def test_json_lines_one_answer_line_per_record(
    payload_server: ServeProcess, expected: list[float]
) -> None:
    body = '[42, 7]\n{"user_id": 42, "item_id": 19}\n\n[7, 301]\n'
    response = invoke(payload_server, body, "application/jsonlines")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/jsonlines"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines == pytest.approx(expected, rel=1e-6)


def test_npy_in_and_out(payload_server: ServeProcess, expected: list[float]) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array(ROWS, dtype=np.int64))
    response = invoke(payload_server, buffer.getvalue(), "application/x-npy")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/x-npy"
    scores = np.load(io.BytesIO(response.content))
    assert scores.shape == (3, 1) and scores.dtype == np.float32
    assert scores.reshape(-1).tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("accept", "content_type", "read"),
    [
        ("application/json", "application/json", lambda r: r.json()["predictions"]),
        (
            "application/json; format=v2",
            "application/json",
            lambda r: r.json()["outputs"][0]["data"],
        ),
        ("text/csv", "text/csv", lambda r: csv_scores(r.text)),
        (
            "application/jsonlines",
            "application/jsonlines",
            lambda r: [json.loads(line) for line in r.text.splitlines()],
        ),
        (
            "application/x-npy",
            "application/x-npy",
            lambda r: np.load(io.BytesIO(r.content)).reshape(-1).tolist(),
        ),
        ("text/html;q=0.9, text/csv", "text/csv", lambda r: csv_scores(r.text)),
        ("*/*", "text/csv", lambda r: csv_scores(r.text)),
    ],
)
def test_accept_chooses_the_answer(
    payload_server: ServeProcess, expected: list[float], accept: str, content_type: str, read
) -> None:
    response = invoke(payload_server, "42,7\n42,19\n7,301\n", "text/csv", accept)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == content_type
    assert read(response) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("accept", ["text/csv", "application/json;format=simple"])
def test_native_requests_answer_in_other_encodings(
    payload_server: ServeProcess, expected: list[float], accept: str
) -> None:
    v2 = invoke(payload_server, json.dumps(ncf_request(USERS, ITEMS)), "application/json", accept)
    body, size = binary_ncf_request(USERS, ITEMS)
    binary = invoke(payload_server, body, f"{BINARY_TYPE};json-header-size={size}", accept)
    for response in (v2, binary):
        assert response.status_code == 200, response.text
        if accept == "text/csv":
            assert csv_scores(response.text) == pytest.approx(expected, rel=1e-6)
        else:
            assert response.json()["predictions"] == pytest.approx(expected, rel=1e-6)


def test_native_requests_keep_their_own_answers(payload_server: ServeProcess) -> None:
    for accept in (None, "application/json", "*/*"):
        v2 = invoke(payload_server, json.dumps(ncf_request([1], [2])), "application/json", accept)
        assert v2.status_code == 200
        assert v2.json()["model_name"] == "ncf_food"
    body, size = binary_ncf_request([1], [2])
    binary = invoke(payload_server, body, f"{BINARY_TYPE};json-header-size={size}", "*/*")
    assert binary.headers["Content-Type"].startswith(f"{BINARY_TYPE};json-header-size=")


def test_text_models_take_text_bytes_and_images(payload_server: ServeProcess) -> None:
    text = invoke(payload_server, "héllo", "text/plain; charset=utf-8", target="echo")
    assert text.status_code == 200, text.text
    assert text.json() == {"predictions": ["echo:héllo"]}
    as_text = invoke(payload_server, "hi", "text/plain", "text/plain", target="echo")
    assert as_text.headers["Content-Type"].startswith("text/plain")
    assert as_text.text == "echo:hi\n"
    many = invoke(
        payload_server, json.dumps({"inputs": ["a", "b"]}), "application/json", target="echo"
    )
    assert many.json() == {"predictions": ["echo:a", "echo:b"]}
    image = b"\x89PNG\r\n\x1a\n\x00\xff"
    for content_type in ("image/png", "application/octet-stream"):
        response = invoke(payload_server, image, content_type, target="echo")
        assert response.status_code == 200, response.text
        (prediction,) = response.json()["predictions"]
        assert prediction == {"b64": "ZWNobzqJUE5HDQoaCgD/"}  # b"echo:" + the bytes as sent


def test_multi_dim_inputs_and_outputs(payload_server: ServeProcess) -> None:
    response = invoke(payload_server, "1,2,10,20\n3,4,30,40\n", "text/csv", target="twin")
    assert response.status_code == 200, response.text
    # SUM then DIFF, each flattened, one line per record.
    assert response.text == "11.0,22.0,-9.0,-18.0\n33.0,44.0,-27.0,-36.0\n"
    simple = invoke(
        payload_server,
        json.dumps({"instances": [{"A": [1, 2], "B": [10, 20]}]}),
        "application/json",
        target="twin",
    )
    assert simple.json() == {"predictions": [{"SUM": [11.0, 22.0], "DIFF": [-9.0, -18.0]}]}


def test_a_model_pins_its_inputs_and_outputs(payload_server: ServeProcess) -> None:
    # twin_pinned: SERVE_PAYLOAD_INPUTS="B,A", SERVE_PAYLOAD_OUTPUTS="DIFF".
    response = invoke(payload_server, "10,20,1,2\n", "text/csv", target="twin_pinned")
    assert response.status_code == 200, response.text
    assert response.text == "-9.0,-18.0\n"
    npy = invoke(payload_server, "10,20,1,2\n", "text/csv", "application/x-npy", "twin_pinned")
    assert np.load(io.BytesIO(npy.content)).tolist() == [[-9.0, -18.0]]


def test_target_model_picks_another_model(payload_server: ServeProcess) -> None:
    fashion = native_scores(payload_server, target="ncf_fashion")
    food = native_scores(payload_server)
    assert fashion != pytest.approx(food)
    simple = invoke(payload_server, json.dumps(ROWS), "application/json", target="ncf_fashion")
    assert simple.json()["predictions"] == pytest.approx(fashion, rel=1e-6)
    response = requests.post(
        f"{payload_server.url}/invocations",
        data="42,7\n",
        headers={
            "Content-Type": "text/csv",
            "X-Amzn-SageMaker-Custom-Attributes": "trace=1; target_model=ncf_fashion, x=y",
        },
        timeout=30,
    )
    assert csv_scores(response.text) == pytest.approx(fashion[:1], rel=1e-6)


@pytest.mark.parametrize("name", ["nope", "ncf", "x y", "ncf_food~"])
def test_unknown_target_model_is_404_listing_the_models(
    payload_server: ServeProcess, name: str
) -> None:
    response = invoke(
        payload_server, json.dumps(ncf_request([1], [2])), "application/json", target=name
    )
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert "it serves: echo, ncf_fashion, ncf_food, stream, twin, twin_pinned" in error


# -- errors ------------------------------------------------------------------


def assert_error(response: requests.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    for fragment in fragments:
        assert fragment in error, error


@pytest.mark.parametrize("content_type", ["application/xml", "multipart/form-data", "foo"])
def test_unsupported_content_type_is_415(payload_server: ServeProcess, content_type: str) -> None:
    response = invoke(payload_server, "<x/>", content_type)
    assert_error(response, 415, "not supported", "text/csv")


def test_text_for_a_model_without_a_bytes_input_is_415(payload_server: ServeProcess) -> None:
    response = invoke(payload_server, "hello", "text/plain")
    assert_error(response, 415, "one BYTES input", "user_id (INT64, dims [1])")


@pytest.mark.parametrize("accept", ["image/png", "text/html, application/xml", "text/csv;q=0"])
def test_unsupported_accept_is_406(payload_server: ServeProcess, accept: str) -> None:
    for body, content_type in (
        ("42,7", "text/csv"),
        (json.dumps(ncf_request([1], [2])), "application/json"),
    ):
        assert_error(invoke(payload_server, body, content_type, accept), 406, "Accept")


def test_npy_answer_of_several_outputs_is_406(payload_server: ServeProcess) -> None:
    response = invoke(payload_server, "1,2,3,4", "text/csv", "application/x-npy", "twin")
    assert_error(response, 406, "SUM, DIFF", "SERVE_PAYLOAD_OUTPUTS")


@pytest.mark.parametrize(
    ("body", "content_type", "fragments"),
    [
        ("[42, 7, 1]", "application/json", ["holds 3 values", "user_id 1 + item_id 1"]),
        ('{"inputs": [["a", 7]]}', "application/json", ["user_id (INT64", "'a'"]),
        ('{"inputs": [[4.5, 7]]}', "application/json", ["user_id", "whole numbers", "4.5"]),
        ('{"instances": [{"user_id": 1}]}', "application/json", ["lacks input item_id"]),
        ('{"instances": [{"user": 1}]}', "application/json", ["'user'", "inputs are"]),
        ('{"inputs": "hello"}', "application/json", ["single value", "user_id"]),
        ("42,x\n", "text/csv", ["item_id", "'x'"]),
        ("1,2,3\n", "text/csv", ["holds 3 values"]),
        ("42\n", "text/csv", ["holds 1 values"]),
        ('{"a": 1}\n[1, 2]', "application/jsonlines", ["'a'"]),
        ("{broken\n", "application/jsonlines", ["line 1 is not valid JSON"]),
        ("not npy", "application/x-npy", ["not a .npy"]),
        ("[99999, 7]", "application/json", ["user_id 99999 is outside the trained range"]),
        ("{not json", "application/json", ["not valid JSON"]),
    ],
)
def test_payloads_that_do_not_fit_are_400_naming_the_input(
    payload_server: ServeProcess, body: str, content_type: str, fragments: list[str]
) -> None:
    assert_error(invoke(payload_server, body, content_type), 400, *fragments)


def test_more_records_than_the_batch_are_answered_too(payload_server: ServeProcess) -> None:
    # twin batches 16: split into two Triton requests (test_batch_transform.py has more).
    response = invoke(payload_server, "1,2,3,4\n" * 17, "text/csv", target="twin")
    assert response.status_code == 200, response.text
    assert response.text.splitlines() == ["4.0,6.0,-2.0,-2.0"] * 17


@pytest.mark.parametrize("content_type", ["text/csv", "application/json", "application/x-npy"])
def test_body_over_the_limit_is_413(payload_server: ServeProcess, content_type: str) -> None:
    response = invoke(payload_server, b"1,2\n" * 70000, content_type)  # SERVE_MAX_BODY_BYTES=262144
    assert_error(response, 413, "larger than 262144 bytes")


def test_chunked_body_over_the_limit_is_413(payload_server: ServeProcess) -> None:
    response = requests.post(
        f"{payload_server.url}/invocations",
        data=iter([b"1,2\n" * 10000] * 8),
        headers={"Content-Type": "text/csv"},
        timeout=30,
    )
    assert_error(response, 413, "larger than")


def test_empty_body_is_400_for_every_type(payload_server: ServeProcess) -> None:
    for content_type in ("text/csv", "application/json", "text/plain"):
        assert_error(invoke(payload_server, b"", content_type), 400, "empty")
