"""Extending the image: a custom Python-based backend served by real Triton."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO_ROOT, ServeProcess

StartServe = Callable[..., ServeProcess]
EXAMPLE_BACKENDS = REPO_ROOT / "container" / "backends"


@pytest.mark.container
def test_model_served_by_the_example_affine_backend(
    opt_ml: Path, start_serve: StartServe, serve_target: str
) -> None:
    model = opt_ml / "model" / "scaled"
    (model / "1").mkdir(parents=True)  # the code lives in the backend, not the model
    (model / "config.pbtxt").write_text(
        """
        backend: "affine"
        max_batch_size: 8
        input [ { name: "X", data_type: TYPE_FP32, dims: [ -1 ] } ]
        output [ { name: "Y", data_type: TYPE_FP32, dims: [ -1 ] } ]
        parameters [
          { key: "scale", value: { string_value: "2" } },
          { key: "offset", value: { string_value: "0.5" } }
        ]
        """
    )
    # The image has container/backends/ in Triton's own backends folder.
    local = serve_target == "local"
    extra = {"SERVE_EXTRA_BACKENDS": str(EXAMPLE_BACKENDS)} if local else {}
    server = start_serve(opt_ml, **extra).wait_ready()
    body = {"inputs": [{"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    response = requests.post(f"{server.url}/invocations", json=body, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [2.5, 4.5, 6.5]
    assert ("adding backend 'affine'" in server.output) == local


def test_extra_backends_folder_that_does_not_exist_is_refused(
    opt_ml: Path, start_serve: StartServe
) -> None:
    (opt_ml / "model" / "m" / "1").mkdir(parents=True)
    server = start_serve(opt_ml, SERVE_EXTRA_BACKENDS=str(opt_ml / "nowhere"))
    assert server.wait_exit(30) == 1
    assert "SERVE_EXTRA_BACKENDS names" in server.output
