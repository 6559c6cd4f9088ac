"""A repository as SageMaker lays out uncompressed model data, served for real.

With ModelDataSource (S3DataType S3Prefix, CompressionType None) SageMaker
copies every object under the prefix into /opt/ml/model at its key's path
below the prefix. S3 holds files only: no links (an uploader stores what a
link points at) and no folders (a folder exists only as the prefix of the
keys below it, so an empty one is gone). An ensemble's version folder is
empty, so it never arrives; serve gives the ensemble its version back.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.conftest import ServeProcess, add_request, write_add_model

StartServe = Callable[..., ServeProcess]

ENSEMBLE_CONFIG = """
name: "sum"
platform: "ensemble"
max_batch_size: 8
input [
  { name: "A", data_type: TYPE_FP32, dims: [ 4 ] },
  { name: "B", data_type: TYPE_FP32, dims: [ 4 ] }
]
output [ { name: "C", data_type: TYPE_FP32, dims: [ 4 ] } ]
ensemble_scheduling {
  step [
    {
      model_name: "add"
      model_version: -1
      input_map { key: "A" value: "A" }
      input_map { key: "B" value: "B" }
      output_map { key: "C" value: "C" }
    }
  ]
}
"""


def s3_objects(repository: Path) -> dict[str, bytes]:
    """What `aws s3 cp --recursive` (or smtriton package --uncompressed) stores: files by key."""
    objects = {}
    for root, _, files in os.walk(repository, followlinks=True):
        for name in files:
            path = Path(root, name)
            objects[path.relative_to(repository).as_posix()] = path.read_bytes()
    return objects


def lay_out_as_sagemaker(objects: dict[str, bytes], model_dir: Path) -> None:
    """SageMaker's copy of an uncompressed prefix into /opt/ml/model: each key, as a file."""
    for key, data in objects.items():
        target = model_dir / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


@pytest.mark.container
def test_an_uncompressed_prefix_serves_with_its_ensemble_and_linked_files(
    opt_ml: Path, start_serve: StartServe, tmp_path: Path
) -> None:
    repository = tmp_path / "repository"
    write_add_model(repository, name="add")
    # A second model whose code is a link to the first's, as the NCF examples do.
    twin = write_add_model(repository, name="add_twin")
    (twin / "1" / "model.py").unlink()
    (twin / "1" / "model.py").symlink_to(repository / "add" / "1" / "model.py")
    ensemble = repository / "sum"
    (ensemble / "1").mkdir(parents=True)
    (ensemble / "config.pbtxt").write_text(textwrap.dedent(ENSEMBLE_CONFIG))

    objects = s3_objects(repository)
    assert "sum/config.pbtxt" in objects and not any(k.startswith("sum/1") for k in objects)
    shutil.rmtree(opt_ml / "model")
    lay_out_as_sagemaker(objects, opt_ml / "model")
    assert not (opt_ml / "model" / "sum" / "1").exists()
    assert not (opt_ml / "model" / "add_twin" / "1" / "model.py").is_symlink()

    server = start_serve(opt_ml, SAGEMAKER_TRITON_DEFAULT_MODEL_NAME="sum").wait_ready()
    assert "model 'sum' is an ensemble without a version folder" in server.output
    body = add_request([1, 2, 3, 4], [10, 20, 30, 40])
    answer = requests.post(f"{server.url}/invocations", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [11, 22, 33, 44]
    twin_answer = requests.post(
        f"{server.url}/invocations",
        json=body,
        headers={"X-Amzn-SageMaker-Custom-Attributes": "target_model=add_twin"},
        timeout=30,
    )
    assert twin_answer.json()["outputs"][0]["data"] == [11, 22, 33, 44]
    # What SageMaker copied stays as it was: serve adds the version to its own copy.
    assert not (opt_ml / "model" / "sum" / "1").exists()
