"""Two fronts on one Triton: `serve`, and Triton's own SageMaker frontend beside it.

The compatibility tests send each request the way a published client does
(AWS's `sagemaker-triton` notebooks, aws-samples' hosting and GPU multi-model
benchmarks, the SageMaker SDK's Triton predictor, NVIDIA's `qa/L0_sagemaker`)
to both fronts, in the same test, and compare status and parsed answer. Both
reach the very same model instances: the Triton that `serve` starts also
opens its built-in SageMaker frontend (`--allow-sagemaker`) on a port of its
own, through the wrapper the benchmarks use (build/bench/serve_under_test.py).

Triton 2.51's frontend has no inference types (generate, generate_stream came
with 2.56), so the oracle for those is Triton's own generate routes on the same
server (`/v2/models/NAME/generate[_stream]`), the routes the newer frontend calls.

The models mirror the clients' own:
- `sm_model`: NVIDIA QA's `sm_model` (two INT32 [16] inputs, sum and difference);
- `text_model`: one BYTES input (the SDXL and conda-setup models of AWS's GPU
  multi-model notebooks take text this way);
- `identity`: QA's multi-model `sm_mme_model_2`, FP32 [8] in and out;
- `mock_llm`: QA's decoupled `mock_llm` (PROMPT, STREAM, REPETITION), for
  generate and generate_stream.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

from tests.conftest import REPO_ROOT, ServeProcess, free_port, serve_env
from tests.payloads.conftest import write_model as write_payload_model

BINARY_TYPE = "application/vnd.sagemaker-triton.binary+json"


def _bench_module(name: str) -> ModuleType:
    """A module of build/bench (not a package: its scripts import each other by name)."""
    path = REPO_ROOT / "build" / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"compat_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


serve_under_test = _bench_module("serve_under_test")

SM_MODEL_PY = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT0", a + b), pb_utils.Tensor("OUTPUT1", a - b)]
            ))
        return responses
"""

TEXT_MODEL_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            out = np.array([[b"echo:" + v for v in row] for row in text], dtype=object)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", out)]))
        return responses
"""

IDENTITY_PY = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(
                "OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            )])
            for r in requests
        ]
"""

# QA's mock_llm, decoupled: STREAM true sends the prompt REPETITION times.
MOCK_LLM_PY = """
import json
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            params = json.loads(request.parameters() or "{}")
            repetitions = params.get("REPETITION", 1)
            sender = request.get_response_sender()
            prompt = pb_utils.get_input_tensor_by_name(request, "PROMPT").as_numpy()
            stream = pb_utils.get_input_tensor_by_name(request, "STREAM").as_numpy()
            response = pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", prompt)])
            for _ in range(repetitions if stream.reshape(-1)[0] else 1):
                sender.send(response)
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

MODELS = {
    "sm_model": (
        """
        max_batch_size: 8
        input [ { name: "INPUT0", data_type: TYPE_INT32, dims: [ 16 ] },
                { name: "INPUT1", data_type: TYPE_INT32, dims: [ 16 ] } ]
        output [ { name: "OUTPUT0", data_type: TYPE_INT32, dims: [ 16 ] },
                 { name: "OUTPUT1", data_type: TYPE_INT32, dims: [ 16 ] } ]
        """,
        SM_MODEL_PY,
    ),
    "text_model": (
        """
        max_batch_size: 8
        input [ { name: "TEXT", data_type: TYPE_STRING, dims: [ 1 ] } ]
        output [ { name: "OUTPUT", data_type: TYPE_STRING, dims: [ 1 ] } ]
        """,
        TEXT_MODEL_PY,
    ),
    "identity": (
        """
        max_batch_size: 8
        input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 8 ] } ]
        output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 8 ] } ]
        """,
        IDENTITY_PY,
    ),
    "mock_llm": (
        """
        max_batch_size: 0
        model_transaction_policy { decoupled: true }
        input [ { name: "PROMPT", data_type: TYPE_STRING, dims: [ 1, 1 ] },
                { name: "STREAM", data_type: TYPE_BOOL, dims: [ 1, 1 ] } ]
        output [ { name: "TEXT", data_type: TYPE_STRING, dims: [ 1, -1 ] } ]
        """,
        MOCK_LLM_PY,
    ),
}


def write_model(repository: Path, model: str, name: str | None = None) -> Path:
    """One of MODELS under `repository`, as `name` (its folder and config name)."""
    config, code = MODELS[model]
    name = name or model
    write_payload_model(repository, name, config, code)
    return repository / name


@dataclasses.dataclass
class Fronts:
    """`serve`, and Triton's own SageMaker frontend on the same Triton."""

    serve: ServeProcess
    # Triton's SageMaker frontend (--allow-sagemaker) of serve's Triton.
    reference: str
    # Triton's v2 HTTP frontend on loopback (where nginx sends requests).
    triton_http: str
    root: Path

    def both(self, method: str, path: str, **kwargs: Any) -> tuple[requests.Response, ...]:
        """The same request to serve, then to Triton's frontend."""
        kwargs.setdefault("timeout", 60)
        return tuple(
            requests.request(method, f"{url}{path}", **kwargs)
            for url in (self.serve.url, self.reference)
        )

    def upload(self, model: str, key: str, name: str, flat: bool = False) -> str:
        """One of MODELS as SageMaker places a multi-model artifact: in
        /opt/ml/models/<key>/model, as a model folder (`model/<name>/config.pbtxt`),
        or `flat`, the model's own files (`model/config.pbtxt`, NVIDIA QA's layout).
        The config names the model `name`: each front loads a copy of its own,
        under its own name, into the one Triton."""
        url = self.root / "opt_ml" / "models" / key / "model"
        folder = write_model(url.parent / "staging", model, name)
        shutil.copytree(folder, url if flat else url / name)
        shutil.rmtree(folder.parent)
        return str(url)


def start_fronts(root: Path, models: tuple[str, ...], **env: str) -> Fronts:
    """serve on `models` (none: a multi-model endpoint) with Triton's frontend beside it."""
    opt_ml = root / "opt_ml"
    (opt_ml / "model").mkdir(parents=True)
    (opt_ml / "models").mkdir()
    for model in models:
        write_model(opt_ml / "model", model)
    reference_port = free_port()
    triton = serve_under_test.triton_with_sagemaker_frontend(
        root / "triton", reference_port, serve_under_test.env_bin(None)
    )
    port = free_port()
    server = ServeProcess(serve_env(opt_ml, port, TRITONSERVER_BIN=str(triton), **env), port, root)
    try:
        server.wait_ready()
        reference = f"http://127.0.0.1:{reference_port}"
        server.wait_until(lambda: _ping(reference) == 200, 60, "Triton's frontend to be ready")
        triton_http = f"127.0.0.1:{serve_under_test.triton_http_port(server.output)}"
    except BaseException:
        server.stop()
        raise
    return Fronts(server, reference, triton_http, root)


def sagemaker_runtime(url: str, path: str) -> Any:
    """boto3's sagemaker-runtime client, its InvokeEndpoint sent to `url` + `path`.

    No SageMaker endpoint can be reached here: the runtime's URL
    (/endpoints/NAME/invocations) is rewritten to the container's route, which is
    what SageMaker forwards, headers (ContentType, Accept, TargetModel as
    X-Amzn-SageMaker-Target-Model) and body as botocore wrote them.
    """
    import boto3

    client = boto3.client(
        "sagemaker-runtime",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        endpoint_url=url,
    )

    def to_container(request: Any, **_kwargs: object) -> None:
        request.url = f"{url}{path}"

    client.meta.events.register("before-send.sagemaker-runtime.InvokeEndpoint", to_container)
    return client


def _ping(url: str) -> int | None:
    try:
        return requests.get(f"{url}/ping", timeout=2).status_code
    except requests.RequestException:
        return None


@pytest.fixture(scope="module")
def fronts_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Fronts]]:
    """Starts Fronts for a module (shared by its tests); all are stopped when it ends."""
    started: list[Fronts] = []

    def start(models: tuple[str, ...], **env: str) -> Fronts:
        fronts = start_fronts(tmp_path_factory.mktemp("compat"), models, **env)
        started.append(fronts)
        return fronts

    yield start
    for fronts in started:
        fronts.serve.stop()


def v2_json(response: requests.Response) -> dict[str, Any]:
    """A v2 JSON answer with what differs by front alone (the model's name) left out."""
    document = response.json()
    document.pop("model_name", None)
    return document


def sm_request(data: list[int] | None = None) -> dict[str, Any]:
    """QA's request to sm_model: INPUT0 = INPUT1 = 0..15."""
    values = data if data is not None else list(range(16))
    return {
        "inputs": [
            {"name": name, "datatype": "INT32", "shape": [1, 16], "data": values}
            for name in ("INPUT0", "INPUT1")
        ]
    }
