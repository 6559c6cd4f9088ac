"""Batch transform against real Triton: MultiRecord bodies split to the model's batch size,
GET /execution-parameters, and a run driven as SageMaker's batch agent drives one.

The models are small Python-backend ones whose answers can be computed here,
so every answer line is checked against its own input line, in order.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.conftest import ServeProcess, free_port, serve_env
from tests.payloads.conftest import ECHO_PY, STREAM_PY, TWIN_PY, write_model

MIB = 1024 * 1024
# twin batches 16: A (FP32, dims [2]) and B give SUM and DIFF.
TWIN_BATCH = 16

DOUBLE_PY = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(
                "Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() * 2)])
            for r in requests
        ]
"""


def twin_config(count: int = 1) -> str:
    return f"""
        max_batch_size: {TWIN_BATCH}
        input [ {{ name: "A", data_type: TYPE_FP32, dims: [ 2 ] }},
                {{ name: "B", data_type: TYPE_FP32, dims: [ 2 ] }} ]
        output [ {{ name: "SUM", data_type: TYPE_FP32, dims: [ 2 ] }},
                 {{ name: "DIFF", data_type: TYPE_FP32, dims: [ 2 ] }} ]
        instance_group [ {{ kind: KIND_CPU, count: {count} }} ]
        """


def xy_config(max_batch_size: int) -> str:
    return f"""
        max_batch_size: {max_batch_size}
        input [ {{ name: "X", data_type: TYPE_FP32, dims: [ 2 ] }} ]
        output [ {{ name: "Y", data_type: TYPE_FP32, dims: [ 2 ] }} ]
        instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
        """


# name: (config.pbtxt without name and backend, model.py)
MODELS = {
    "echo": (
        """
        max_batch_size: 8
        input [ { name: "INPUT", data_type: TYPE_STRING, dims: [ 1 ] } ]
        output [ { name: "OUTPUT", data_type: TYPE_STRING, dims: [ 1 ] } ]
        instance_group [ { kind: KIND_CPU, count: 1 } ]
        """,
        ECHO_PY,
    ),
    # Does not batch: one Triton request per record.
    "double": (xy_config(0), DOUBLE_PY),
    # Batches 4096: bulk runs.
    "bulk": (xy_config(4096), DOUBLE_PY),
    "stream": (
        """
        max_batch_size: 0
        model_transaction_policy { decoupled: true }
        input [ { name: "text_input", data_type: TYPE_STRING, dims: [ 1 ] } ]
        output [ { name: "text_output", data_type: TYPE_STRING, dims: [ 1 ] } ]
        instance_group [ { kind: KIND_CPU, count: 1 } ]
        """,
        STREAM_PY,
    ),
}


def start_batch_server(
    root: Path,
    default_model: str = "twin",
    twin_instances: int = 1,
    others: tuple[str, ...] = (),
    **env: str,
) -> ServeProcess:
    """serve on `default_model` and `others` (twin, or one of MODELS), with `env`."""
    repository = root / "opt_ml" / "model"
    for name in (default_model, *others):
        config, code = (twin_config(twin_instances), TWIN_PY) if name == "twin" else MODELS[name]
        write_model(repository, name, config, code, instances=None)
    port = free_port()
    settings = {"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": default_model, **env}
    return ServeProcess(serve_env(root / "opt_ml", port, **settings), port, root)


@pytest.fixture(scope="module")
def batch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    server = start_batch_server(tmp_path_factory.mktemp("batch"), others=("echo", "double"))
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def invoke(
    server: ServeProcess, body: bytes | str, content_type: str, accept: str | None = None
) -> requests.Response:
    headers = {"Content-Type": content_type}
    if accept:
        headers["Accept"] = accept
    return requests.post(f"{server.url}/invocations", data=body, headers=headers, timeout=120)


def twin_rows(count: int, start: int = 0) -> np.ndarray:
    """Rows of A0, A1, B0, B1, each different, so an answer out of order shows."""
    index = np.arange(start, start + count, dtype=np.float64)
    return np.stack([index, index + 0.5, np.full(count, 1.0), index % 7], axis=1)


def twin_answers(rows: np.ndarray) -> np.ndarray:
    """SUM0, SUM1, DIFF0, DIFF1 per row, in float32 as the model computes them."""
    a, b = rows[:, :2].astype(np.float32), rows[:, 2:].astype(np.float32)
    return np.concatenate([a + b, a - b], axis=1)


def bulk_rows(count: int) -> np.ndarray:
    index = np.arange(count, dtype=np.float64)
    return np.stack([index, index + 0.5], axis=1)


def csv_body(rows: np.ndarray) -> str:
    return "".join(",".join(repr(float(v)) for v in row) + "\n" for row in rows)


def csv_answer(text: str) -> np.ndarray:
    return np.array([[float(v) for v in line.split(",")] for line in text.splitlines()])


# --- MultiRecord bodies larger than the model's batch ------------------------------------


def test_csv_of_thousands_of_lines_is_split_and_answered_line_for_line(
    batch_server: ServeProcess,
) -> None:
    rows = twin_rows(5000)
    response = invoke(batch_server, csv_body(rows), "text/csv")
    assert response.status_code == 200, response.text
    answer = csv_answer(response.text)
    assert answer.shape == (5000, 4)
    np.testing.assert_array_equal(answer, twin_answers(rows))


def test_json_lines_of_thousands_of_records_are_split_and_answered_in_order(
    batch_server: ServeProcess,
) -> None:
    rows = twin_rows(3001)
    body = "\n".join(json.dumps({"A": list(r[:2]), "B": list(r[2:])}) for r in rows)
    response = invoke(batch_server, body, "application/jsonlines")
    assert response.status_code == 200, response.text
    lines = response.text.splitlines()
    assert len(lines) == 3001
    answers = [json.loads(line) for line in lines]
    expected = twin_answers(rows)
    assert [a["SUM"] + a["DIFF"] for a in answers] == expected.tolist()


def test_json_instances_beyond_the_batch_are_split_too(batch_server: ServeProcess) -> None:
    rows = twin_rows(TWIN_BATCH * 3 + 5)
    response = invoke(batch_server, json.dumps({"instances": rows.tolist()}), "application/json")
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["SUM"] + p["DIFF"] for p in predictions] == twin_answers(rows).tolist()


def test_bytes_records_beyond_the_batch_keep_their_order(batch_server: ServeProcess) -> None:
    words = [f"word-{i}" for i in range(8 * 40 + 3)]
    body = "\n".join(json.dumps(word) for word in words)
    response = requests.post(
        f"{batch_server.url}/invocations",
        data=body,
        headers={
            "Content-Type": "application/jsonlines",
            "X-Amzn-SageMaker-Custom-Attributes": "target_model=echo",
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert [json.loads(line) for line in response.text.splitlines()] == [
        f"echo:{word}" for word in words
    ]


def test_a_model_that_does_not_batch_gets_one_request_per_record(
    batch_server: ServeProcess,
) -> None:
    rows = [[i, -i] for i in range(40)]
    response = requests.post(
        f"{batch_server.url}/invocations",
        data="".join(f"{a},{b}\n" for a, b in rows),
        headers={
            "Content-Type": "text/csv",
            "X-Amzn-SageMaker-Custom-Attributes": "target_model=double",
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert csv_answer(response.text).tolist() == [[2 * a, 2 * b] for a, b in rows]


@pytest.mark.parametrize(
    ("line", "bad", "fragment"),
    [(2718, "1.0,2.0,x,4.0", "'x'"), (2000, "1.0,2.0,3.0", "holds 3 values")],
    ids=["not-a-number", "wrong-width"],
)
def test_one_bad_csv_line_among_thousands_is_400_naming_its_line(
    batch_server: ServeProcess, line: int, bad: str, fragment: str
) -> None:
    lines = csv_body(twin_rows(4000)).splitlines()
    lines[line - 1] = bad
    response = invoke(batch_server, "\n".join(lines) + "\n", "text/csv")
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert f"line {line}" in message and fragment in message


def test_one_bad_json_line_is_400_naming_its_line(batch_server: ServeProcess) -> None:
    rows = twin_rows(2500)
    lines = [json.dumps({"A": list(r[:2]), "B": list(r[2:])}) for r in rows]
    lines[1234] = json.dumps({"A": [1, 2]})
    # Blank lines are not records, but lines are counted as the body has them.
    body = "\n".join(lines[:10]) + "\n\n" + "\n".join(lines[10:])
    response = invoke(batch_server, body, "application/jsonlines")
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert "line 1236" in message and "lacks input B" in message


def test_a_csv_quoted_field_spanning_lines_is_named_by_its_first_line(
    batch_server: ServeProcess,
) -> None:
    body = '"1.0","2.0","3.0","4.0"\n5,6,7,8\n"x\ny",1,2,3\n'
    response = invoke(batch_server, body, "text/csv")
    assert response.status_code == 400, response.text
    assert "line 3" in response.json()["error"]


# --- GET /execution-parameters -------------------------------------------------------------


def execution_parameters(server: ServeProcess) -> dict[str, object]:
    response = requests.get(f"{server.url}/execution-parameters", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


def test_execution_parameters_keep_the_model_busy_within_the_platforms_limits(
    batch_server: ServeProcess,
) -> None:
    # One instance: a request computing while the next is read and decoded.
    assert execution_parameters(batch_server) == {
        "MaxConcurrentTransforms": 2,
        "BatchStrategy": "MULTI_RECORD",
        "MaxPayloadInMB": 6,
    }
    assert requests.post(f"{batch_server.url}/execution-parameters", timeout=10).status_code == 405


@pytest.mark.parametrize(
    ("default_model", "instances", "env", "expected"),
    [
        # Three instances, each with a request to work on and one more on its way.
        ("twin", 3, {}, {"MaxConcurrentTransforms": 4, "MaxPayloadInMB": 6}),
        # 40 MB payloads: SageMaker refuses concurrency x payload over 100 MB.
        (
            "twin",
            3,
            {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "40"},
            {"MaxConcurrentTransforms": 2, "MaxPayloadInMB": 40},
        ),
        # A streaming model answers one record per request.
        ("stream", 1, {}, {"BatchStrategy": "SINGLE_RECORD"}),
        # What the job set itself is answered as it is.
        (
            "twin",
            1,
            {
                "SAGEMAKER_BATCH": "true",
                "SAGEMAKER_BATCH_STRATEGY": "SINGLE_RECORD",
                "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "7",
                "SAGEMAKER_MAX_PAYLOAD_IN_MB": "12",
            },
            {"MaxConcurrentTransforms": 7, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 12},
        ),
    ],
    ids=["three-instances", "large-payloads", "streaming-model", "set-by-the-job"],
)
def test_execution_parameters_follow_the_model_and_the_job(
    tmp_path: Path,
    default_model: str,
    instances: int,
    env: dict[str, str],
    expected: dict[str, object],
) -> None:
    server = start_batch_server(tmp_path, default_model, instances, **env)
    try:
        answer = execution_parameters(server.wait_ready())
    finally:
        server.stop()
    assert {key: answer[key] for key in expected} == expected


def test_a_payload_limit_set_by_the_job_raises_the_body_limit(tmp_path: Path) -> None:
    # SageMaker sends bodies up to MaxPayloadInMB: 12 MB must not be refused at 6.
    server = start_batch_server(tmp_path, "bulk", SAGEMAKER_MAX_PAYLOAD_IN_MB="12")
    try:
        server.wait_ready()
        rows = bulk_rows(1_200_000).astype(np.float32)
        buffer = io.BytesIO()
        np.save(buffer, rows)
        assert 6 * MIB < len(buffer.getvalue()) < 12 * MIB
        response = invoke(server, buffer.getvalue(), "application/x-npy")
        assert response.status_code == 200, response.text[:300]
        np.testing.assert_array_equal(np.load(io.BytesIO(response.content)), rows * 2)
        too_large = invoke(server, b"1,2\n" * (12 * MIB // 4 + 1), "text/csv")
        assert too_large.status_code == 413
    finally:
        server.stop()


# --- a run, as SageMaker's batch agent drives one ---------------------------------------------


def transform(server: ServeProcess, lines: list[str]) -> tuple[list[str], list[str]]:
    """SplitType=Line, MultiRecord, AssembleWith=Line: the output lines, and each failure.

    As SageMaker does: ask /execution-parameters once, pack whole lines into
    bodies of at most MaxPayloadInMB, send at most MaxConcurrentTransforms at
    a time, and join the answers in input order.
    """
    parameters = execution_parameters(server)
    limit = int(parameters["MaxPayloadInMB"]) * MIB
    bodies: list[str] = []
    current: list[str] = []
    size = 0
    for line in lines:
        if current and size + len(line) + 1 > limit:
            bodies.append("\n".join(current) + "\n")
            current, size = [], 0
        current.append(line)
        size += len(line) + 1
    bodies.append("\n".join(current) + "\n")

    def send(body: str) -> requests.Response:
        return invoke(server, body, "text/csv", "text/csv")

    with ThreadPoolExecutor(int(parameters["MaxConcurrentTransforms"])) as pool:
        answers = list(pool.map(send, bodies))
    output, failures = [], []
    for answer in answers:
        if answer.status_code == 200:
            output.extend(answer.text.splitlines())
        else:
            failures.append(f"{answer.status_code} {answer.json()['error']}")
    return output, failures


def test_a_batch_transform_run_of_many_lines_and_a_bad_one(tmp_path: Path) -> None:
    # 1 MB payloads, so the run takes several requests, as many at a time as answered.
    server = start_batch_server(tmp_path, "bulk", SAGEMAKER_MAX_PAYLOAD_IN_MB="1")
    try:
        server.wait_ready()
        rows = bulk_rows(100_000)
        lines = csv_body(rows).splitlines()
        assert len("\n".join(lines)) > 1.5 * MIB
        started = time.monotonic()
        output, failures = transform(server, lines)
        seconds = time.monotonic() - started
        assert failures == []
        np.testing.assert_array_equal(csv_answer("\n".join(output)), rows.astype(np.float32) * 2)
        print(f"\n{len(lines)} lines in {seconds:.2f} s: {len(lines) / seconds:,.0f} records/s")

        lines[75_001] = "1.0,oops"
        output, failures = transform(server, lines)
        # The bad line fails its own request, which says where in its body it is.
        assert len(failures) == 1
        assert failures[0].startswith("400 ") and "line " in failures[0] and "'oops'" in failures[0]
        assert len(output) < len(lines)
    finally:
        server.stop()
