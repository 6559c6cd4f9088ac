"""Choosing and preparing the model repository, as a user packages it."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from serve.artifacts.repository import Preparation, prepare_single_model_repository
from serve.errors import ArtifactError, ConfigError
from tests.conftest import EXAMPLES, ServeProcess, add_request, write_add_model

StartServe = Callable[..., ServeProcess]
CPU_HOST = Preparation(gpu_count=0)
GPU_HOST = Preparation(gpu_count=1)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_the_only_folder_is_the_default_model(tmp_path: Path) -> None:
    write_add_model(tmp_path / "model", name="solo")
    prepared = prepare_single_model_repository(tmp_path / "model", tmp_path / "out", None, CPU_HOST)
    assert prepared.default_model == "solo"


def test_several_folders_need_a_default_name_and_the_error_lists_them(tmp_path: Path) -> None:
    for name in ("alpha", "beta"):
        write_add_model(tmp_path / "model", name=name)
    with pytest.raises(ConfigError) as caught:
        prepare_single_model_repository(tmp_path / "model", tmp_path / "out", None, CPU_HOST)
    assert "alpha, beta" in caught.value.message
    assert "SAGEMAKER_TRITON_DEFAULT_MODEL_NAME" in caught.value.message
    prepared = prepare_single_model_repository(
        tmp_path / "model", tmp_path / "out", "beta", CPU_HOST
    )
    assert prepared.default_model == "beta"
    assert {m.name for m in prepared.models} == {"alpha", "beta"}


def test_unknown_default_name_lists_the_folders(tmp_path: Path) -> None:
    write_add_model(tmp_path / "model", name="alpha")
    with pytest.raises(ConfigError, match=r"'gamma' has no folder .* folders found: alpha"):
        prepare_single_model_repository(tmp_path / "model", tmp_path / "out", "gamma", CPU_HOST)


def test_empty_or_missing_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / ".ipynb_checkpoints").mkdir()
    with pytest.raises(ArtifactError, match="no model found"):
        prepare_single_model_repository(tmp_path / "model", tmp_path / "out", None, CPU_HOST)
    with pytest.raises(ArtifactError, match="does not exist"):
        prepare_single_model_repository(tmp_path / "absent", tmp_path / "out", None, CPU_HOST)


def test_unparseable_config_names_file_and_line(tmp_path: Path) -> None:
    folder = write_add_model(tmp_path / "model")
    (folder / "config.pbtxt").write_text('name: "add"\nbackend: "python"\nmax_batch_size: lots\n')
    with pytest.raises(ArtifactError) as caught:
        prepare_single_model_repository(tmp_path / "model", tmp_path / "out", None, CPU_HOST)
    assert f"{folder / 'config.pbtxt'}:3" in caught.value.message


def test_gpu_instances_move_to_cpu_in_the_prepared_copy_only(tmp_path: Path) -> None:
    write_add_model(tmp_path / "model", kind="KIND_GPU")
    before = tree_digest(tmp_path / "model")
    prepared = prepare_single_model_repository(tmp_path / "model", tmp_path / "out", None, CPU_HOST)
    text = (prepared.path / "add" / "config.pbtxt").read_text()
    assert "KIND_CPU" in text and "KIND_GPU" not in text
    assert tree_digest(tmp_path / "model") == before
    on_gpu_host = prepare_single_model_repository(
        tmp_path / "model", tmp_path / "gpu", None, GPU_HOST
    )
    assert "KIND_GPU" in (on_gpu_host.path / "add" / "config.pbtxt").read_text()


def test_top_level_config_is_served_as_one_model(opt_ml: Path, start_serve: StartServe) -> None:
    folder = write_add_model(opt_ml / "stage", name="flat")
    for item in folder.iterdir():
        shutil.move(str(item), opt_ml / "model" / item.name)
    before = tree_digest(opt_ml / "model")
    server = start_serve(opt_ml).wait_ready()
    response = requests.post(
        f"{server.url}/invocations", json=add_request([1, 2, 3, 4], [4, 3, 2, 1]), timeout=10
    )
    assert response.status_code == 200, response.text
    assert response.json()["model_name"] == "flat"
    assert "holds config.pbtxt at its top level; serving it as the single model 'flat'" in (
        server.output
    )
    assert tree_digest(opt_ml / "model") == before


def test_a_link_to_nothing_stops_start_up_naming_it(opt_ml: Path, start_serve: StartServe) -> None:
    # One NCF example packed alone keeps its link to the other's model.py, to nothing:
    # Triton never finished loading it, and start-up waited SERVE_STARTUP_TIMEOUT.
    folder = write_add_model(opt_ml / "model")
    (folder / "1" / "model.py").unlink()
    (folder / "1" / "model.py").symlink_to("../../ncf_food/1/model.py")
    server = start_serve(opt_ml)
    assert server.wait_exit(60) != 0
    assert "1/model.py" in server.output and "which does not exist" in server.output
    assert "dereference" in server.output


def test_ensemble_and_its_steps_all_load(opt_ml: Path, start_serve: StartServe) -> None:
    repository = opt_ml / "model"
    write_add_model(repository, name="step")
    ensemble = repository / "pipeline"
    (ensemble / "1").mkdir(parents=True)
    (ensemble / "config.pbtxt").write_text(
        """
        name: "pipeline"
        platform: "ensemble"
        max_batch_size: 8
        input [ { name: "X", data_type: TYPE_FP32, dims: [ 4 ] } ]
        output [ { name: "Y", data_type: TYPE_FP32, dims: [ 4 ] } ]
        ensemble_scheduling { step [
          { model_name: "step", model_version: -1,
            input_map { key: "A" value: "X" } input_map { key: "B" value: "X" }
            output_map { key: "C" value: "DOUBLE" } },
          { model_name: "step", model_version: -1,
            input_map { key: "A" value: "DOUBLE" } input_map { key: "B" value: "X" }
            output_map { key: "C" value: "Y" } }
        ] }
        """
    )
    server = start_serve(opt_ml, SAGEMAKER_TRITON_DEFAULT_MODEL_NAME="pipeline").wait_ready()
    body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    response = requests.post(f"{server.url}/invocations", json=body, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [3, 6, 9, 12]


def test_examples_serve_ncf_scores_on_cpu_with_a_warning(examples_server: ServeProcess) -> None:
    """The bundled repository asks for KIND_GPU; here it runs on the CPU."""
    assert "asks for KIND_GPU instances but this host has no GPU" in examples_server.output
    config = (EXAMPLES / "ncf_food" / "config.pbtxt").read_text()
    assert "KIND_GPU" in config
    request = {
        "inputs": [
            {"name": "user_id", "shape": [2, 1], "datatype": "INT64", "data": [7, 7]},
            {"name": "item_id", "shape": [2, 1], "datatype": "INT64", "data": [3, 4]},
        ]
    }
    response = requests.post(
        f"{examples_server.url}/invocations", data=json.dumps(request), timeout=10
    )
    assert response.status_code == 200
    assert len(response.json()["outputs"][0]["data"]) == 2
