"""Names an upload's content gives (config names, ensemble steps, folders) are checked.

A multi-model upload is the endpoint's content, prepared as root: every name
taken from it is checked like the `model_name` of the load, and every path
built from one is proven inside its root before any file operation, so an
upload cannot write or delete anything outside the prepared repository.
"""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

import requests

from tests.conftest import ServeProcess, write_add_model
from tests.multi_model.test_multi_model import ADD, invoke, load

StartServe = Callable[..., ServeProcess]


def ensemble_config(name: str, step: str) -> str:
    return textwrap.dedent(f"""
        name: "{name}"
        platform: "ensemble"
        max_batch_size: 8
        input [ {{ name: "X", data_type: TYPE_FP32, dims: [ 4 ] }} ]
        output [ {{ name: "Y", data_type: TYPE_FP32, dims: [ 4 ] }} ]
        ensemble_scheduling {{ step [ {{ model_name: "{step}", model_version: -1,
          input_map {{ key: "A" value: "X" }} input_map {{ key: "B" value: "X" }}
          output_map {{ key: "C" value: "Y" }} }} ] }}
        """)


def hostile_upload(url: Path, scratch: Path, config_name: str) -> None:
    """An ensemble, and an archive of one model whose config.pbtxt names it `config_name`.

    The ensemble uses it as its step, so it is prepared as `<upload>~<config_name>`.
    """
    (url / "pipeline" / "1").mkdir(parents=True)
    (url / "pipeline" / "config.pbtxt").write_text(ensemble_config("pipeline", config_name))
    model = write_add_model(scratch, name="inner")
    config = (model / "config.pbtxt").read_text().replace('name: "inner"', f'name: "{config_name}"')
    (model / "config.pbtxt").write_text(config)
    subprocess.run(["tar", "-czf", str(url / "model.tar.gz"), "-C", str(model), "."], check=True)


def test_a_config_naming_a_path_outside_cannot_touch_it(
    opt_ml: Path, start_serve: StartServe, enterable_tmp: Path, tmp_path: Path
) -> None:
    """`../../../../victim` once reached <workdir>/victim: files linked in, then rmtree'd."""
    victim = enterable_tmp / "victim"
    (victim / "1").mkdir(parents=True)
    (victim / "keep.txt").write_text("precious")
    mme = start_serve(opt_ml, SAGEMAKER_MULTI_MODEL="true", SERVE_WORKDIR=str(enterable_tmp))
    mme.wait_ready()
    # The repository is <workdir>/run/repository: "<upload>~.." and three more ".." lead
    # to the workdir itself.
    url = opt_ml / "models" / "evil" / "model"
    hostile_upload(url, tmp_path / "scratch", "../../../../victim")
    refused = load(mme, "evil", str(url))
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert "model.tar.gz" in error and "config.pbtxt" in error, error
    assert "'../../../../victim'" in error and "rename" in error, error
    assert (victim / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in victim.iterdir()) == ["1", "keep.txt"]
    assert not list((enterable_tmp / "run" / "repository").iterdir())
    assert requests.get(f"{mme.url}/models", timeout=5).json() == {"models": []}


def test_every_name_from_an_upload_is_checked(
    opt_ml: Path, start_serve: StartServe, tmp_path: Path
) -> None:
    mme = start_serve(opt_ml, SAGEMAKER_MULTI_MODEL="true").wait_ready()
    models = opt_ml / "models"

    # A step naming no model of the upload: another upload's models are not its to use.
    assert load(mme, "other", str(_add_upload(models / "other" / "model"))).status_code == 200
    reach = models / "reach" / "model"
    (reach / "pipeline" / "1").mkdir(parents=True)
    (reach / "pipeline" / "config.pbtxt").write_text(ensemble_config("pipeline", "other"))
    refused = load(mme, "reach", str(reach))
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert "pipeline/config.pbtxt" in error and "'other'" in error and "upload" in error, error

    # A step named with a path, in a folder of the upload.
    stepped = models / "stepped" / "model"
    (stepped / "pipeline" / "1").mkdir(parents=True)
    (stepped / "pipeline" / "config.pbtxt").write_text(ensemble_config("pipeline", "../x"))
    write_add_model(stepped, name="x")
    refused = load(mme, "stepped", str(stepped))
    assert refused.status_code == 400, refused.text
    assert "pipeline/config.pbtxt" in refused.json()["error"], refused.text

    # A folder whose name holds a line break (it would forge log lines).
    broken = models / "broken" / "model"
    write_add_model(broken, name="bad\nname")
    refused = load(mme, "broken", str(broken))
    assert refused.status_code == 400, refused.text
    assert "'bad\\nname'" in refused.json()["error"], refused.text

    # A config at the url's top naming itself with a path.
    direct = models / "direct" / "model"
    _add_upload(direct)
    config = direct / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "add"', 'name: "../../escape"'))
    refused = load(mme, "direct", str(direct))
    assert refused.status_code == 400, refused.text
    assert "config.pbtxt" in refused.json()["error"], refused.text

    # An environment from elsewhere on the host: serve would unpack it, Triton run it.
    elsewhere = tmp_path / "env.tar.gz"
    elsewhere.write_bytes(b"not for this upload")
    environment = models / "environment" / "model"
    _add_upload(environment)
    parameter = f'key: "EXECUTION_ENV_PATH" value: {{ string_value: "{elsewhere}" }}'
    with (environment / "config.pbtxt").open("a") as config:
        config.write(f"parameters {{ {parameter} }}\n")
    refused = load(mme, "environment", str(environment))
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert "EXECUTION_ENV_PATH" in error and "outside" in error, error

    assert requests.get(f"{mme.url}/models", timeout=5).json() == {
        "models": [{"modelName": "other", "modelUrl": str(models / "other" / "model")}]
    }
    assert invoke(mme, "other", ADD).status_code == 200


def test_a_step_named_with_shell_syntax_loads_and_runs_nothing(
    opt_ml: Path, start_serve: StartServe, tmp_path: Path
) -> None:
    """Triton's Python backend starts a stub through a shell, the model's path unquoted."""
    mme = start_serve(opt_ml, SAGEMAKER_MULTI_MODEL="true").wait_ready()
    marker = tmp_path / "ran"  # serve's (and so Triton's) working folder
    step = "step; touch ran; echo"
    url = opt_ml / "models" / "shell" / "model"
    (url / "pipeline" / "1").mkdir(parents=True)
    (url / "pipeline" / "config.pbtxt").write_text(ensemble_config("pipeline", step))
    write_add_model(url, name=step)
    loaded = load(mme, "shell", str(url))
    assert loaded.status_code == 200, loaded.text
    body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    answer = invoke(mme, "shell", body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [2, 4, 6, 8]
    assert not marker.exists()


def test_single_model_repository_names_are_checked(
    opt_ml: Path, start_serve: StartServe, enterable_tmp: Path
) -> None:
    """/opt/ml/model's own top-level config.pbtxt may not name a path either."""
    write_add_model(opt_ml, name="model")
    config = opt_ml / "model" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "model"', 'name: "../../victim"'))
    (enterable_tmp / "victim").mkdir()
    server = start_serve(opt_ml, SERVE_WORKDIR=str(enterable_tmp))
    assert server.wait_exit(60) == 1
    assert "'../../victim'" in server.output and "config.pbtxt" in server.output
    assert "Traceback" not in server.output
    assert not list((enterable_tmp / "victim").iterdir())


def _add_upload(url: Path) -> Path:
    """The add model's own files directly at `url` (config.pbtxt at its top)."""
    folder = write_add_model(url.parent / "scratch", name="add")
    folder.rename(url)
    return url
