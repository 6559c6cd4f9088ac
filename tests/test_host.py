"""/dev/shm sizing and OpenMP threads for the Python backend, and finding Triton's parts."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from serve import model_config
from serve.errors import ConfigError
from serve.host import cpu_count, plan_python_shm, threads_per_instance
from serve.triton_install import STUB_NAME, locate_triton, stub_python_version
from tests.conftest import ServeProcess, add_request, own_tmpfs, write_add_model

StartServe = Callable[..., ServeProcess]


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def python_config(count: int) -> model_config.ModelConfig:
    config = model_config.ModelConfig(backend="python")
    config.instance_group.add(kind=model_config.InstanceKind.KIND_CPU, count=count)
    return config


def test_shm_that_fits_is_left_alone(tmp_path: Path) -> None:
    plan = plan_python_shm([python_config(2)], 1024 * 1024, 0, tmp_path)
    assert plan.region_bytes == 1024 * 1024 and plan.instances == 2


def test_shm_too_small_is_lowered_to_fit(tmp_path: Path) -> None:
    available = free_bytes(tmp_path)
    plan = plan_python_shm([python_config(3)], available, 0, tmp_path)
    assert plan.region_bytes * 3 <= available
    assert plan.region_bytes >= 1024 * 1024


def test_shm_far_too_small_is_an_error_with_the_numbers(tmp_path: Path) -> None:
    count = free_bytes(tmp_path) // (1024 * 1024) + 10
    with pytest.raises(ConfigError) as caught:
        plan_python_shm([python_config(count)], 16 * 1024 * 1024, 0, tmp_path)
    assert f"{count} Python-backend instances" in caught.value.message
    assert "--shm-size" in caught.value.message


# Docker's default /dev/shm, in a mount namespace of the test's own.
SMALL_SHM = own_tmpfs("/dev/shm", "64m")


def test_serve_fits_shm_into_a_small_dev_shm_and_still_serves(
    opt_ml: Path, start_serve: StartServe
) -> None:
    # Five instances at the default 16 MiB need 80 MiB of a 64 MiB /dev/shm.
    write_add_model(opt_ml / "model", count=5)
    server = start_serve(opt_ml, wrapper=SMALL_SHM).wait_ready()
    assert "too little for 5 Python-backend instances at 16777216 bytes" in server.output
    assert "lowering it to 12582912 bytes" in server.output
    response = requests.post(
        f"{server.url}/invocations", json=add_request([1, 1, 1, 1], [2, 2, 2, 2]), timeout=10
    )
    assert response.json()["outputs"][0]["data"] == [3, 3, 3, 3]


def test_threads_are_shared_out_among_instances() -> None:
    assert threads_per_instance(16, 4) == 4
    assert threads_per_instance(16, 3) == 5
    assert threads_per_instance(2, 5) == 1
    # One instance has the CPUs to itself: the libraries' own default stands.
    assert threads_per_instance(16, 1) is None
    assert threads_per_instance(16, 0) is None


# C = A + B + the instance's OMP_NUM_THREADS (0 when unset).
THREADS_MODEL_PY = """
import os
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        threads = float(os.environ.get("OMP_NUM_THREADS", "0"))
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("C", (
                pb_utils.get_input_tensor_by_name(r, "A").as_numpy()
                + pb_utils.get_input_tensor_by_name(r, "B").as_numpy() + threads))])
            for r in requests
        ]
"""


@pytest.mark.parametrize("given", [None, "3"])
def test_model_instances_get_omp_threads_unless_the_user_chose(
    opt_ml: Path, start_serve: StartServe, monkeypatch: pytest.MonkeyPatch, given: str | None
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    write_add_model(opt_ml / "model", count=2, model_py=THREADS_MODEL_PY)
    env = {"OMP_NUM_THREADS": given} if given else {}
    server = start_serve(opt_ml, **env).wait_ready()
    response = requests.post(
        f"{server.url}/invocations", json=add_request([0, 0, 0, 0], [0, 0, 0, 0]), timeout=10
    )
    expected = int(given) if given else max(1, cpu_count() // 2)
    assert response.json()["outputs"][0]["data"] == [expected] * 4
    announced = f"OMP_NUM_THREADS={expected} for Triton and each of its 2 Python-backend"
    assert (announced in server.output) is (given is None)


def test_local_triton_is_found_with_a_stub_for_this_python(tmp_path: Path) -> None:
    install = locate_triton(None)
    assert install.binary.name == "tritonserver"
    assert install.python_version in install.python_stubs
    backends = install.backends_folder(tmp_path / "overlay")
    assert (backends / "python" / STUB_NAME).exists()
    assert (backends / "python" / "libtriton_python.so").exists()
    stub = install.python_stubs[install.python_version]
    assert stub_python_version(stub) == install.python_version


def test_tritonserver_bin_that_is_not_executable_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "tritonserver"
    fake.write_text("")
    with pytest.raises(ConfigError, match=r"TRITONSERVER_BIN=.* is not an executable file"):
        locate_triton(fake)
