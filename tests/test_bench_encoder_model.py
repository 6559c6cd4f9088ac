"""The GPU benchmark's encoder model (build/bench/bert_repository), served on the CPU.

CI has no GPU, so `serve` moves its KIND_GPU instance to the CPU, where
model.py runs the module eagerly in float32; the CUDA-graph path is checked
against the eager module on a GPU by build/bench/gpu_encoder.py itself. What
this pins down: the batch is assembled from and split back into requests
correctly, through the same pinned-buffer code path, and matches the module
called in-process.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import numpy as np
import requests
import torch

from serve.triton import model_config
from tests.conftest import REPO_ROOT, ServeProcess

REPOSITORY = REPO_ROOT / "build" / "bench" / "bert_repository"
SEQUENCE = 128


def _encoder_module() -> ModuleType:
    path = REPOSITORY / "bert_base" / "1" / "encoder.py"
    spec = importlib.util.spec_from_file_location("bert_bench_encoder_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ids(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 30522, size=(rows, SEQUENCE))


def test_served_encoder_matches_the_module_in_process(
    opt_ml: Path, start_serve: Callable[..., ServeProcess]
) -> None:
    # One instance: the committed four (for the GPU) would each load a copy here.
    model = shutil.copytree(REPOSITORY / "bert_base", opt_ml / "model" / "bert_base")
    config = model_config.read_config(model / model_config.CONFIG_FILE)
    config.instance_group[0].count = 1
    model_config.write_config(config, model / model_config.CONFIG_FILE)
    server = start_serve(opt_ml, SAGEMAKER_TRITON_DEFAULT_MODEL_NAME="bert_base").wait_ready(240)
    assert "asks for KIND_GPU instances but this host has no GPU" in server.output

    requests_ids = [_ids(rows, seed) for seed, rows in enumerate((1, 3, 1, 2))]

    def infer(ids: np.ndarray) -> np.ndarray:
        body = {
            "inputs": [
                {
                    "name": "input_ids",
                    "shape": list(ids.shape),
                    "datatype": "INT64",
                    "data": ids.ravel().tolist(),
                }
            ]
        }
        response = requests.post(f"{server.url}/invocations", json=body, timeout=60)
        assert response.status_code == 200, response.text
        output = response.json()["outputs"][0]
        assert output["name"] == "pooled" and output["datatype"] == "FP32"
        assert output["shape"] == [len(ids), 768]
        return np.array(output["data"], dtype=np.float32).reshape(len(ids), 768)

    # Sent together, so the dynamic batcher may join them into one batch.
    with ThreadPoolExecutor(len(requests_ids)) as pool:
        served = list(pool.map(infer, requests_ids))

    model = _encoder_module().build(torch.device("cpu"), torch.float32)
    with torch.inference_mode():
        for ids, pooled in zip(requests_ids, served, strict=True):
            expected = model(torch.from_numpy(ids)).numpy()
            np.testing.assert_allclose(pooled, expected, atol=1e-4)
    assert np.abs(served[1][0] - served[1][1]).max() > 1e-3, "rows must differ"
