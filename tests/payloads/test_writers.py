"""v2 JSON answers written by serve's writers (serve/payloads/writers.py), against a real Triton.

The module's server sends every v2 JSON request of `wide` to the writers
(SERVE_V2_JSON_WRITERS_AT=0: the front always counts as busy);
`test_triton_answers_until_it_is_busy` checks the split, Triton while the front
holds few requests and the writers from SERVE_V2_JSON_WRITERS_AT on.

`wide` answers 300 values per output (at SERVE_V2_JSON_MIN_VALUES' default of 256:
serve writes its JSON); `half` answers 4 FP16 values (serve writes them, Triton
cannot); `twin` answers 2 + 2 floats (Triton writes them). Who wrote an answer
shows in its floats: Triton writes a float32 as the double it widens to
(0.10000000149011612), orjson as the shortest text that reads back as the same
float32 (0.1).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from tritonclient.grpc import model_config_pb2

from serve.front.nginx import FrontModel, decimal_below
from serve.payloads.writers import JsonWriter, writer_count, writes_json
from serve.triton.model_config import ModelConfig
from tests.conftest import ServeProcess, free_port, front_config, serve_env
from tests.payloads.conftest import TWIN_CONFIG, TWIN_PY, write_model, writer_pids

VALUES = 300
BINARY_TYPE = "application/vnd.sagemaker-triton.binary+json"
# SERVE_BODY_BUFFER_BYTES of the module's server: larger bodies reach the writers spooled.
BODY_BUFFER = 4096

# An input value that makes `wide` take its time.
SLOW_X = 99.0

WIDE_PY = f"""
import time

import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            if x.flat[0] == {SLOW_X}:
                # Held in Triton (test_triton_answers_until_it_is_busy): says so in NOTE's file.
                note = pb_utils.get_input_tensor_by_name(request, "NOTE").as_numpy()
                open(note.flat[0].decode(), "w").close()
                time.sleep(3)
            steps = np.arange({VALUES}, dtype=np.float64)[None, :] * 0.1 + x
            outputs = {{
                "F32": steps.astype(np.float32),
                "F64": steps,
                "I64": (steps * 10).astype(np.int64) - 7,
                "U8": (np.arange({VALUES})[None, :] % 256 + 0 * x).astype(np.uint8),
                "FLAG": (np.arange({VALUES})[None, :] % 3 == 0) & (x >= 0),
                "TEXT": np.array([["snow ☃", "x"]] * len(x), dtype=object),
            }}
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, value) for name, value in outputs.items()]
            ))
        return responses
"""

HALF_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            half = (x + np.array([[0.5, 1.5, -2.25, 1024]])).astype(np.float16)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("H", half)]))
        return responses
"""


def write_models(repository: Path) -> None:
    wide_outputs = ", ".join(
        f'{{ name: "{name}", data_type: {kind}, dims: [ {VALUES} ] }}'
        for name, kind in [
            ("F32", "TYPE_FP32"),
            ("F64", "TYPE_FP64"),
            ("I64", "TYPE_INT64"),
            ("U8", "TYPE_UINT8"),
            ("FLAG", "TYPE_BOOL"),
        ]
    )
    write_model(
        repository,
        "wide",
        f"""
        max_batch_size: 8
        input [ {{ name: "X", data_type: TYPE_FP32, dims: [ 1 ] }},
                {{ name: "NOTE", data_type: TYPE_STRING, dims: [ 1 ], optional: true }} ]
        output [ {wide_outputs}, {{ name: "TEXT", data_type: TYPE_STRING, dims: [ 2 ] }} ]
        """,
        WIDE_PY,
    )
    write_model(
        repository,
        "half",
        """
        max_batch_size: 8
        input [ { name: "X", data_type: TYPE_FP32, dims: [ 1 ] } ]
        output [ { name: "H", data_type: TYPE_FP16, dims: [ 4 ] } ]
        """,
        HALF_PY,
    )
    write_model(repository, "twin", TWIN_CONFIG, TWIN_PY)


def start_writers_server(root: Path, **env: str) -> ServeProcess:
    opt_ml = root / "opt_ml"
    write_models(opt_ml / "model")
    port = free_port()
    settings = {"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "wide", **env}
    return ServeProcess(serve_env(opt_ml, port, **settings), port, root)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    started = start_writers_server(
        tmp_path_factory.mktemp("writers"),
        SERVE_V2_JSON_WRITERS="2",
        SERVE_V2_JSON_WRITERS_AT="0",
        SERVE_BODY_BUFFER_BYTES=str(BODY_BUFFER),
    )
    try:
        yield started.wait_ready()
    finally:
        started.stop()


def invoke(
    server: ServeProcess, body: object, model: str = "wide", **headers: str
) -> requests.Response:
    return requests.post(
        f"{server.url}/invocations",
        data=json.dumps(body),
        headers={
            "Content-Type": "application/json",
            "X-Amzn-SageMaker-Custom-Attributes": f"target_model={model}",
            **headers,
        },
        timeout=30,
    )


def wide_request(xs: list[float], **fields: object) -> dict[str, object]:
    return {
        "id": "request-7",
        "inputs": [{"name": "X", "shape": [len(xs), 1], "datatype": "FP32", "data": xs}],
        **fields,
    }


TRITON_WRITES = {"binary_data_output": False}


def as_arrays(answer: dict[str, object]) -> dict[str, np.ndarray]:
    types = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "UINT8": np.uint8}
    types |= {"BOOL": np.bool_, "BYTES": object, "FP16": np.float16}
    return {
        output["name"]: np.array(output["data"], dtype=types[output["datatype"]]).reshape(
            output["shape"]
        )
        for output in answer["outputs"]  # type: ignore[union-attr]
    }


def test_serve_writes_what_triton_would_have_written(server: ServeProcess) -> None:
    ours = invoke(server, wide_request([0.0, 2.5]))
    theirs = invoke(server, wide_request([0.0, 2.5], parameters=TRITON_WRITES))
    assert ours.status_code == theirs.status_code == 200, (ours.text, theirs.text)
    assert ours.headers["Content-Type"] == "application/json"
    # Written by serve, and so not by Triton: the floats' text tells.
    assert '"data":[0.0,0.1,0.2,' in ours.text
    assert "0.10000000149011612" in theirs.text
    mine, reference = ours.json(), theirs.json()
    described = ("name", "datatype", "shape")
    assert [{k: o[k] for k in described} for o in mine["outputs"]] == [
        {k: o[k] for k in described} for o in reference["outputs"]
    ]
    assert {k: v for k, v in mine.items() if k != "outputs"} == {
        k: v for k, v in reference.items() if k != "outputs"
    }
    assert mine["id"] == "request-7"
    for name, values in as_arrays(mine).items():
        np.testing.assert_array_equal(values, as_arrays(reference)[name], err_msg=name)
    assert as_arrays(mine)["TEXT"][0, 0] == "snow ☃"


def test_outputs_the_request_names_are_the_ones_written(server: ServeProcess) -> None:
    request = wide_request([1.0], outputs=[{"name": "I64"}, {"name": "F32"}])
    answer = invoke(server, request)
    assert answer.status_code == 200, answer.text
    names = [o["name"] for o in answer.json()["outputs"]]
    theirs = invoke(server, {**request, "parameters": TRITON_WRITES}).json()
    assert names == [o["name"] for o in theirs["outputs"]]
    assert sorted(names) == ["F32", "I64"]
    assert as_arrays(answer.json())["I64"][0, :3].tolist() == [3, 4, 5]


def test_a_request_that_chose_binary_outputs_gets_them(server: ServeProcess) -> None:
    request = wide_request(
        [1.0], outputs=[{"name": "F32", "parameters": {"binary_data": True}}, {"name": "U8"}]
    )
    answer = invoke(server, request)
    assert answer.status_code == 200, answer.text
    size = int(answer.headers["Content-Type"].rsplit("=", 1)[1])
    assert answer.headers["Content-Type"].startswith(BINARY_TYPE)
    header = json.loads(answer.content[:size])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 4 * VALUES}
    assert header["outputs"][1]["data"][:3] == [0, 1, 2]  # U8 as the request left it: JSON
    floats = struct.unpack(f"<{VALUES}f", answer.content[size:])
    assert floats[:2] == pytest.approx([1.0, 1.1])


def test_a_busy_front_sends_requests_for_binary_outputs_to_triton(server: ServeProcess) -> None:
    """Such a request has no JSON for a writer to write: it skips their hop.

    With the writers frozen, only a request nginx sends to Triton is answered.
    """
    frozen = writer_pids(server)
    assert frozen
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        for fields in (
            {"parameters": {"binary_data_output": True}},
            {"outputs": [{"name": "F32", "parameters": {"binary_data": True}}]},
        ):
            answer = invoke(server, wide_request([1.0], **fields))
            assert answer.status_code == 200, answer.text
            assert answer.headers["Content-Type"].startswith(BINARY_TYPE)
        try:
            late = requests.post(
                f"{server.url}/invocations",
                data=json.dumps(wide_request([1.0])),
                headers={"Content-Type": "application/json"},
                timeout=2,
            )
        except requests.Timeout:
            late = None
        # Answered once in a full run (not since, alone or beside four busy loops): what
        # came, and the front's log, say how when it happens again.
        assert late is None, (late.status_code, late.text[:300], server.excerpt())
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)


def test_fp16_outputs_are_written_though_triton_cannot(server: ServeProcess) -> None:
    request = wide_request([1.0])
    ours = invoke(server, request, "half")
    assert ours.status_code == 200, ours.text
    assert ours.json()["outputs"][0]["datatype"] == "FP16"
    assert as_arrays(ours.json())["H"].tolist() == [[1.5, 2.5, -1.25, 1025.0]]
    theirs = invoke(server, wide_request([1.0], parameters=TRITON_WRITES), "half")
    assert theirs.status_code == 400
    assert "FP16" in theirs.json()["error"]


def test_small_outputs_are_left_to_triton(server: ServeProcess) -> None:
    request = {
        "inputs": [
            {"name": "A", "shape": [1, 2], "datatype": "FP32", "data": [0.1, 1]},
            {"name": "B", "shape": [1, 2], "datatype": "FP32", "data": [0, 0]},
        ]
    }
    answer = invoke(server, request, "twin")
    assert answer.status_code == 200, answer.text
    assert "0.10000000149011612" in answer.text


def test_a_body_past_the_memory_buffer_reaches_a_writer(server: ServeProcess) -> None:
    note = {"name": "NOTE", "shape": [1, 1], "datatype": "BYTES", "data": ["n" * 3 * BODY_BUFFER]}
    request = wide_request([0.0])
    request["inputs"].append(note)  # type: ignore[attr-defined]
    answer = invoke(server, request)
    assert answer.status_code == 200, answer.text
    assert '"data":[0.0,0.1,0.2,' in answer.text


def test_triton_refusals_come_back_with_its_reason(server: ServeProcess) -> None:
    request = {"inputs": [{"name": "Y", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}
    answer = invoke(server, request)
    assert answer.status_code == 400
    assert "Y" in answer.json()["error"]
    broken = requests.post(
        f"{server.url}/invocations",
        data=b'{"inputs": [{"name": "X", ',
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert broken.status_code == 400
    assert "error" in broken.json()


def test_triton_answers_until_it_is_busy(tmp_path: Path) -> None:
    started = start_writers_server(
        tmp_path, SERVE_V2_JSON_WRITERS="1", SERVE_V2_JSON_WRITERS_AT="2"
    ).wait_ready()
    try:
        # Alone, a request goes straight to Triton, which writes its JSON.
        alone = invoke(started, wide_request([0.0]))
        assert alone.status_code == 200, alone.text
        assert "0.10000000149011612" in alone.text
        held = tmp_path / "held"
        slow_request = wide_request([SLOW_X])
        slow_request["inputs"].append(  # type: ignore[attr-defined]
            {"name": "NOTE", "shape": [1, 1], "datatype": "BYTES", "data": [str(held)]}
        )
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(invoke, started, slow_request)
            started.wait_until(held.exists, 30, "the slow request to reach the model")
            # With the slow one, the front holds two requests: busy, so a writer's.
            beside = invoke(started, wide_request([0.0]))
            assert slow.result().status_code == 200
        assert beside.status_code == 200, beside.text
        assert '"data":[0.0,0.1,0.2,' in beside.text
        after = invoke(started, wide_request([0.0]))
        assert "0.10000000149011612" in after.text
    finally:
        started.stop()


def test_writers_are_serve_s_children_and_go_with_it(tmp_path: Path) -> None:
    started = start_writers_server(tmp_path, SERVE_V2_JSON_WRITERS="1").wait_ready()
    try:
        (writer,) = writer_pids(started)
        os.kill(writer, signal.SIGKILL)
        code = started.wait_exit(30)
    finally:
        started.stop()
    assert code != 0
    assert "v2 JSON writer 0 exited (killed by signal 9)" in started.output
    assert not started.child_pids("tritonserver") and not started.child_pids("nginx")


def test_writers_off_leaves_every_answer_to_triton(tmp_path: Path) -> None:
    started = start_writers_server(tmp_path, SERVE_V2_JSON_WRITERS="0").wait_ready()
    try:
        answer = invoke(started, wide_request([0.0]))
        assert answer.status_code == 200, answer.text
        assert "0.10000000149011612" in answer.text
        assert "v2 JSON writer" not in started.output
    finally:
        started.stop()


@pytest.mark.container
def test_writers_in_the_image(opt_ml: Path, start_serve: Callable[..., ServeProcess]) -> None:
    write_models(opt_ml / "model")
    started = start_serve(
        opt_ml, SAGEMAKER_TRITON_DEFAULT_MODEL_NAME="wide", SERVE_V2_JSON_WRITERS="1"
    ).wait_ready()
    answer = invoke(started, wide_request([0.0]))
    assert answer.status_code == 200, answer.text
    assert '"data":[0.0,0.1,0.2,' in answer.text
    half = invoke(started, wide_request([1.0]), "half")
    assert as_arrays(half.json())["H"].tolist() == [[1.5, 2.5, -1.25, 1025.0]]


def config(*outputs: tuple[int, list[int]]) -> ModelConfig:
    made = ModelConfig()
    for number, (kind, dims) in enumerate(outputs):
        made.output.add(name=f"O{number}", data_type=kind, dims=dims)
    return made


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        ([(model_config_pb2.TYPE_FP32, [768])], JsonWriter.WHEN_BUSY),
        ([(model_config_pb2.TYPE_FP32, [255])], JsonWriter.TRITON),
        (
            [(model_config_pb2.TYPE_FP32, [128]), (model_config_pb2.TYPE_INT64, [2, 64])],
            JsonWriter.WHEN_BUSY,
        ),
        ([(model_config_pb2.TYPE_FP32, [-1, 384])], JsonWriter.WHEN_BUSY),
        ([(model_config_pb2.TYPE_FP32, [-1, -1])], JsonWriter.TRITON),
        ([(model_config_pb2.TYPE_STRING, [1024])], JsonWriter.TRITON),
        ([(model_config_pb2.TYPE_FP16, [1])], JsonWriter.ALWAYS),
        ([(model_config_pb2.TYPE_BF16, [1])], JsonWriter.ALWAYS),
    ],
)
def test_which_models_serve_writes_json_for(
    outputs: list[tuple[int, list[int]]], expected: JsonWriter
) -> None:
    assert writes_json(config(*outputs), 256) is expected


def test_a_model_without_a_config_is_left_to_triton() -> None:
    assert writes_json(None, 1) is JsonWriter.TRITON


@pytest.mark.parametrize(
    ("setting", "cpus", "expected"),
    [(None, 2, 0), (None, 3, 0), (None, 4, 1), (None, 16, 4), (2, 2, 2), (0, 64, 0)],
)
def test_writers_by_default_one_per_four_cpus(
    setting: int | None, cpus: int, expected: int
) -> None:
    assert writer_count(setting, cpus) == expected


@pytest.mark.parametrize(
    ("environment", "writes", "sockets"),
    [
        ({}, JsonWriter.WHEN_BUSY, 2),
        ({}, JsonWriter.TRITON, 0),
        ({"SAGEMAKER_TRITON_INFERENCE_TYPE": "generate"}, JsonWriter.ALWAYS, 0),
        ({"SAGEMAKER_MULTI_MODEL": "true"}, JsonWriter.WHEN_BUSY, 0),
    ],
)
def test_writers_listen_only_where_a_model_needs_them(
    tmp_path: Path, environment: dict[str, str], writes: JsonWriter, sockets: int
) -> None:
    multi_model = environment.get("SAGEMAKER_MULTI_MODEL") == "true"
    front = front_config(
        tmp_path,
        environment,
        default_model=None if multi_model else "wide",
        models=() if multi_model else (FrontModel("wide", writes_json=writes),),
        v2_json_writers=2,
    )
    assert len(front.writer_sockets()) == sockets
    assert ("location @writers" in front.render()) is bool(sockets)


def test_the_busy_count_pattern_matches_exactly_the_smaller_counts() -> None:
    """nginx compares $connections_writing with SERVE_V2_JSON_WRITERS_AT by this pattern."""
    assert decimal_below(0) is None
    for limit in [*range(1, 1200), 4095, 4096, 9999, 10000, 10001, 12345]:
        pattern = re.compile(f"^{decimal_below(limit)}$")
        around = range(max(0, limit - 120), limit + 120) if limit > 1200 else range(2 * limit + 20)
        wrong = [n for n in around if bool(pattern.match(str(n))) != (n < limit)]
        assert not wrong, (limit, wrong[:5], decimal_below(limit))
