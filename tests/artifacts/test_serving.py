"""Artifacts through the real `serve` and a real Triton: archives and environments."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.artifacts.conftest import (
    PROBE_MODULE,
    PYTHON_VERSION,
    BuiltEnvironment,
    OtherPythonEnvironment,
    TargetEnvironment,
    make_environment,
    member,
    pack_folder,
    write_tar,
)
from tests.artifacts.test_repository_archives import repository_archive, tree_digest
from tests.conftest import ServeProcess, add_request, write_add_model

StartServe = Callable[..., ServeProcess]


def invoke(server: ServeProcess, model: str | None = None) -> requests.Response:
    path = f"/models/{model}/invoke" if model else "/invocations"
    return requests.post(
        f"{server.url}{path}", json=add_request([1, 2, 3, 4], [10, 20, 30, 40]), timeout=30
    )


@pytest.mark.container
def test_archives_in_both_layouts_serve_beside_a_folder(
    opt_ml: Path, start_serve: StartServe, tmp_path: Path
) -> None:
    model_dir = opt_ml / "model"
    write_add_model(model_dir, name="folder_model")
    repository_archive(tmp_path, model_dir / "model.tar.gz", ["flat"])
    repository_archive(tmp_path, model_dir / "wrapped.tar", ["wrapped"], wrapper="repository")
    before = tree_digest(model_dir)

    server = start_serve(opt_ml, SAGEMAKER_TRITON_DEFAULT_MODEL_NAME="wrapped").wait_ready()

    response = invoke(server)
    assert response.status_code == 200, response.text
    assert response.json()["model_name"] == "wrapped"
    assert response.json()["outputs"][0]["data"] == [11, 22, 33, 44]
    # Triton loads every model or start-up fails; this line lists what it was given.
    assert "serving folder_model, flat, wrapped; /invocations runs 'wrapped'" in server.output
    assert tree_digest(model_dir) == before


def test_a_hostile_archive_stops_serve_with_its_name_and_leaves_nothing(
    opt_ml: Path, start_serve: StartServe, enterable_tmp: Path
) -> None:
    write_add_model(opt_ml / "model", name="fine")
    write_tar(
        opt_ml / "model" / "model.tar.gz",
        [member("add/config.pbtxt", b'backend: "python"'), member("/etc/evil", b"x")],
    )
    workdir = enterable_tmp / "workdir"

    server = start_serve(opt_ml, SERVE_WORKDIR=str(workdir))

    assert server.wait_exit(60) == 1
    assert "model.tar.gz: member '/etc/evil' has an absolute path" in server.output
    assert "Traceback" not in server.output
    assert not (workdir / "run").exists()
    assert not Path("/etc/evil").exists()


# C = A + B + the minor version of the Python that runs the model: the
# response itself tells which interpreter served it.
ENV_MODEL_PY = f"""
import sys
import numpy as np
import triton_python_backend_utils as pb_utils
import {PROBE_MODULE}

class TritonPythonModel:
    def initialize(self, args):
        print(
            f"model {{args['model_name']}} runs on Python {{sys.version_info[0]}}."
            f"{{sys.version_info[1]}} from {{sys.prefix}}; probe: {{{PROBE_MODULE}.WHERE}}",
            flush=True,
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "A").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "B").as_numpy()
            c = (a + b + sys.version_info[1]).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("C", c)]))
        return responses
"""


def write_env_model(repository: Path, name: str, env_value: str) -> Path:
    folder = write_add_model(repository, name=name, model_py=ENV_MODEL_PY)
    with (folder / "config.pbtxt").open("a") as config:
        config.write(
            f'parameters {{ key: "EXECUTION_ENV_PATH" value {{ string_value: "{env_value}" }} }}\n'
        )
    return folder


def triton_port(server: ServeProcess) -> int:
    """Triton's own loopback port, from its log: to call models /invocations does not run."""
    found = re.findall(r"Started HTTPService at 127\.0\.0\.1:(\d+)", server.output)
    assert found, server.output[-3000:]
    return int(found[-1])


def infer_directly(server: ServeProcess, model: str) -> list[float]:
    response = requests.post(
        f"http://127.0.0.1:{triton_port(server)}/v2/models/{model}/infer",
        json=add_request([1, 2, 3, 4], [10, 20, 30, 40]),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()["outputs"][0]["data"]


@pytest.mark.container
def test_models_run_in_their_environment_which_is_unpacked_once_and_reused_on_restart(
    opt_ml: Path, start_serve: StartServe, tmp_path: Path, target_env: TargetEnvironment
) -> None:
    model_dir = opt_ml / "model"
    inside = write_env_model(model_dir, "inside", "$$TRITON_MODEL_DIRECTORY/env.tar.gz")
    shutil.copy(target_env.archive, inside / "env.tar.gz")
    write_env_model(model_dir, "beside", "$$TRITON_MODEL_DIRECTORY/../shared-env.tar.gz")
    shutil.copy(target_env.archive, model_dir / "shared-env.tar.gz")
    cache = tmp_path / "env-cache"
    python_version = target_env.python_version
    minor = int(python_version.split(".")[1])
    env = {"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "inside", "SERVE_ENV_CACHE": str(cache)}

    first = start_serve(opt_ml, **env).wait_ready()

    response = invoke(first)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [11 + minor, 22 + minor, 33 + minor, 44 + minor]
    assert infer_directly(first, "beside")[0] == 11 + minor
    (unpacked,) = [path for path in cache.iterdir() if path.is_dir()]
    # Both models import the module only the environment has, from the cache.
    for name in ("inside", "beside"):
        assert f"model {name} runs on Python {python_version} from {unpacked}; probe: only" in (
            first.output
        )
    assert "2 model(s) use 1 environment(s); 1 unpacked now, 0 from the cache" in first.output
    assert first.output.count("(newly unpacked)") == 1
    assert first.output.count("(cached)") == 1
    first.stop()

    second = start_serve(opt_ml, **env).wait_ready()

    assert invoke(second).status_code == 200
    assert "2 model(s) use 1 environment(s); 0 unpacked now, 1 from the cache" in second.output
    assert "(newly unpacked)" not in second.output
    assert [path for path in cache.iterdir() if path.is_dir()] == [unpacked]


def test_one_server_hosts_models_on_two_pythons(
    opt_ml: Path,
    start_serve: StartServe,
    tmp_path: Path,
    serving_env: BuiltEnvironment,
    other_python_env: OtherPythonEnvironment,
) -> None:
    other = other_python_env.python_version
    model_dir = opt_ml / "model"
    write_env_model(model_dir, "default_python", str(serving_env.archive))
    write_env_model(model_dir, "other_python", str(other_python_env.archive))

    server = start_serve(
        opt_ml,
        SAGEMAKER_TRITON_DEFAULT_MODEL_NAME="other_python",
        SERVE_ENV_CACHE=str(tmp_path / "env-cache"),
    ).wait_ready()

    response = invoke(server)
    assert response.status_code == 200, response.text
    other_minor = int(other.split(".")[1])
    assert response.json()["outputs"][0]["data"][0] == 11 + other_minor
    assert infer_directly(server, "default_python")[0] == 11 + int(PYTHON_VERSION.split(".")[1])
    assert f"model other_python runs on Python {other} from " in server.output
    assert f"model default_python runs on Python {PYTHON_VERSION} from " in server.output
    assert f"model 'other_python' runs on Python {other} (stub " in server.output


def test_an_environment_for_a_python_without_a_stub_stops_serve_naming_both(
    opt_ml: Path, start_serve: StartServe, tmp_path: Path
) -> None:
    environment = make_environment(tmp_path / "env", python_version="3.99")
    archive = pack_folder(environment, tmp_path / "env.tar.gz")
    write_env_model(opt_ml / "model", "future", str(archive))

    server = start_serve(opt_ml, SERVE_ENV_CACHE=str(tmp_path / "env-cache"))

    assert server.wait_exit(60) == 1
    assert "is built for Python 3.99, but this server's Python backend has stubs only" in (
        server.output
    )
    assert "Traceback" not in server.output


def test_a_package_from_smtriton_serves_as_an_archive_in_opt_ml_model(
    opt_ml: Path, start_serve: StartServe, tmp_path: Path, serving_env: BuiltEnvironment
) -> None:
    from smtriton.package import PackageConfig, package

    folder = write_add_model(tmp_path / "repository", name="packaged", model_py=ENV_MODEL_PY)
    package(
        PackageConfig(
            models=(folder,),
            output=opt_ml / "model" / "model.tar.gz",
            environments={"packaged": str(serving_env.archive)},
            pythons=(PYTHON_VERSION,),
        )
    )

    server = start_serve(opt_ml, SERVE_ENV_CACHE=str(tmp_path / "env-cache")).wait_ready()

    response = invoke(server)
    assert response.status_code == 200, response.text
    minor = int(PYTHON_VERSION.split(".")[1])
    assert response.json()["outputs"][0]["data"][0] == 11 + minor
    assert "model packaged runs on Python" in server.output
