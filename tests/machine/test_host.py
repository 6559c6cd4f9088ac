"""/dev/shm sizing, OpenMP threads and memory fitting for the Python backend, and finding
Triton's parts; with real cgroup CPU quotas and memory limits where this host allows."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from serve.errors import ConfigError
from serve.machine.host import (
    CpuShare,
    MemoryShare,
    cpu_share,
    fit_to_memory,
    gpu_count,
    plan_python_shm,
    threads_per_instance,
)
from serve.settings import Settings
from serve.triton import model_config
from serve.triton.install import STUB_NAME, locate_triton, stub_python_version
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
    assert plan.region_bytes * (3 + 1) <= available
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
    # 64 MiB for 5 instances and the model's config stub: 10 MiB each.
    assert "lowering it to 10485760 bytes" in server.output
    response = requests.post(
        f"{server.url}/invocations", json=add_request([1, 1, 1, 1], [2, 2, 2, 2]), timeout=10
    )
    assert response.json()["outputs"][0]["data"] == [3, 3, 3, 3]


def test_threads_are_shared_out_among_instances() -> None:
    assert threads_per_instance(CpuShare(16), 4) == 4
    assert threads_per_instance(CpuShare(16), 3) == 5
    assert threads_per_instance(CpuShare(2), 5) == 1
    # One instance has the CPUs to itself: the libraries' own default stands.
    assert threads_per_instance(CpuShare(16), 1) is None
    assert threads_per_instance(CpuShare(16), 0) is None


def test_a_cgroup_quota_below_the_mask_sizes_threads_even_for_one_instance() -> None:
    # An inference component given 1.5 of a 16-CPU host's CPUs as a quota: OpenMP and
    # PyTorch would start 16 threads and be throttled; 2 (the quota rounded up) fit.
    share = CpuShare(affinity=16, quota=1.5)
    assert share.count == 2 and share.quota_limited
    assert threads_per_instance(share, 1) == 2
    assert threads_per_instance(share, 2) == 1
    assert threads_per_instance(CpuShare(16, quota=4.0), 2) == 2
    # A quota above the mask changes nothing; a tiny one still leaves one thread.
    assert CpuShare(2, quota=8.0).count == 2 and not CpuShare(2, quota=8.0).quota_limited
    assert threads_per_instance(CpuShare(2, quota=8.0), 1) is None
    assert CpuShare(8, quota=0.25).count == 1


@pytest.mark.parametrize(
    ("setting", "visible"),
    [
        (None, 8),  # unset: every GPU the driver exposes
        ("0,1", 2),  # an inference component's share of an 8-GPU host
        ("3", 1),
        ("GPU-8f1c3f0e-aaaa-bbbb-cccc-0123456789ab,GPU-00000000-1111-2222-3333-444444444444", 2),
        ("", 0),  # CUDA's way of hiding every GPU
        ("-1", 0),
        ("0,9,1", 1),  # CUDA stops at the first device it cannot use
        ("1,1,2", 0),  # a device named twice hides every one
    ],
)
def test_cuda_visible_devices_narrows_the_gpus_triton_sizes_by(
    tmp_path: Path, setting: str | None, visible: int
) -> None:
    gpus = tmp_path / "gpus"
    for index in range(8):
        (gpus / f"0000:{index:02x}:00.0").mkdir(parents=True)
    environ = {} if setting is None else {"CUDA_VISIBLE_DEVICES": setting}
    visible_devices = Settings.from_environ(environ).visible_devices
    assert gpu_count(visible_devices, gpus) == visible
    # A model's KIND_GPU group with no devices named gets its count per visible GPU (with
    # none, serve moves it to the CPU: its count once).
    config = model_config.ModelConfig(backend="python")
    config.instance_group.add(kind=model_config.InstanceKind.KIND_GPU, count=2)
    assert model_config.instance_count(config, gpu_count(visible_devices, gpus)) == 2 * max(
        1, visible
    )


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
    expected = int(given) if given else max(1, cpu_share().count // 2)
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


# The unified hierarchy, where a controller has no v1 hierarchy of its own.
CGROUP_V2 = Path("/sys/fs/cgroup")


def real_cgroup(
    controller: str, v1_files: dict[str, str], v2_files: dict[str, str]
) -> Iterator[list[str]]:
    """A real cgroup with a limit written into it, and a wrapper that runs a command in it.

    The limit goes into the v1 hierarchy of `controller` when the host mounts
    one (as this kind of machine does), else into v2 where the controller is
    enabled; without root or such a hierarchy the test is skipped. The group
    goes once serve and its children have left it (start_serve's teardown
    runs first).
    """
    name = f"serve-test-{uuid.uuid4().hex[:8]}"
    v1 = Path("/sys/fs/cgroup") / controller
    if (v1 / next(iter(v1_files))).is_file():
        group, files = v1 / name, v1_files
    elif controller in _read(CGROUP_V2 / "cgroup.subtree_control").split():
        group, files = CGROUP_V2 / name, v2_files
    else:
        pytest.skip(f"no cgroup {controller} controller to write a limit into on this host")
    try:
        group.mkdir()
        for file, value in files.items():
            (group / file).write_text(value)
    except OSError as exc:
        pytest.skip(f"cannot make a cgroup with a {controller} limit here: {exc}")
    try:
        yield ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "in-cgroup"]
    finally:
        deadline = time.monotonic() + 30
        while True:
            try:
                group.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@pytest.fixture
def one_cpu_cgroup() -> Iterator[list[str]]:
    """A real cgroup allowed one CPU's worth of time (v1 cpu.cfs_quota_us, or v2 cpu.max)."""
    yield from real_cgroup(
        "cpu",
        {"cpu.cfs_quota_us": "100000", "cpu.cfs_period_us": "100000"},
        {"cpu.max": "100000 100000"},
    )


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_a_cgroup_quota_sets_omp_threads_for_a_single_instance(
    opt_ml: Path,
    one_cpu_cgroup: list[str],
    start_serve: StartServe,  # after the cgroup: it stops serve before the cgroup goes
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The machine's CPUs stay in the mask; only the quota says one. A single instance
    # would otherwise run a thread per CPU of the mask, throttled to one CPU's time.
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs at least 2 CPUs in the affinity mask to tell a quota from the mask")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    write_add_model(opt_ml / "model", count=1, model_py=THREADS_MODEL_PY)
    server = start_serve(opt_ml, wrapper=one_cpu_cgroup).wait_ready()
    response = requests.post(
        f"{server.url}/invocations", json=add_request([0, 0, 0, 0], [0, 0, 0, 0]), timeout=10
    )
    assert response.json()["outputs"][0]["data"] == [1, 1, 1, 1]
    assert "OMP_NUM_THREADS=1 for Triton and each of its 1 Python-backend" in server.output
    assert "a cgroup quota of 1.00 CPUs of the" in server.output


# --- memory ----------------------------------------------------------------------------------

MIB = 1024 * 1024


def test_a_memory_limit_caps_shm_regions_at_a_quarter_of_it(tmp_path: Path) -> None:
    # /dev/shm (here tmp_path) has room; the cgroup, which is charged for its pages, has not.
    memory = MemoryShare(512 * MIB)
    plan = plan_python_shm([python_config(4)], 64 * MIB, 0, tmp_path, memory=memory)
    # A quarter of 512 MiB for 4 instances and the model's config stub.
    assert plan.region_bytes == 25 * MIB
    assert plan_python_shm(
        [python_config(4)], 16 * MIB, 0, tmp_path, memory=memory
    ).region_bytes == (16 * MIB)
    assert plan_python_shm([python_config(4)], 64 * MIB, 0, tmp_path).region_bytes == 64 * MIB
    with pytest.raises(ConfigError) as caught:
        plan_python_shm([python_config(600)], 16 * MIB, 0, tmp_path, memory=memory)
    assert "a cgroup memory limit of 536870912 bytes (512 MiB) leaves 134217728 bytes" in (
        caught.value.message
    )
    assert "MinMemoryRequiredInMb" in caught.value.message


def test_memory_fits_the_body_buffer_and_the_writers() -> None:
    assert MemoryShare(512 * MIB).body_buffer(6 * MIB) == 4 * MIB
    assert MemoryShare(2048 * MIB).body_buffer(6 * MIB) == 6 * MIB
    assert MemoryShare(4 * MIB).body_buffer(6 * MIB) == 64 * 1024
    assert MemoryShare(None).body_buffer(6 * MIB) == 6 * MIB
    assert MemoryShare(1024 * MIB).writers(8) == 4
    assert MemoryShare(200 * MIB).writers(2) == 0
    assert MemoryShare(None).writers(8) == 8


def test_only_serves_own_default_buffer_is_fitted() -> None:
    memory = MemoryShare(512 * MIB)
    assert fit_to_memory(Settings.from_environ({}), memory).body_buffer_bytes == 4 * MIB
    chosen = Settings.from_environ({"SERVE_BODY_BUFFER_BYTES": str(5 * MIB)})
    assert fit_to_memory(chosen, memory).body_buffer_bytes == 5 * MIB
    unlimited = Settings.from_environ({})
    assert fit_to_memory(unlimited, MemoryShare(None)) is unlimited


MEMORY_LIMIT = 512 * MIB


@pytest.fixture
def memory_cgroup() -> Iterator[tuple[list[str], int]]:
    """A real cgroup limited to 512 MiB (v1 memory.limit_in_bytes, or v2 memory.max)."""
    limit = str(MEMORY_LIMIT)
    for wrapper in real_cgroup("memory", {"memory.limit_in_bytes": limit}, {"memory.max": limit}):
        yield wrapper, MEMORY_LIMIT


def test_serve_fits_shm_and_body_buffers_to_a_real_memory_limit(
    opt_ml: Path,
    memory_cgroup: tuple[list[str], int],
    start_serve: StartServe,  # after the cgroup: it stops serve before the cgroup goes
) -> None:
    # An inference component given 512 MiB: four instances at 64 MiB of /dev/shm each
    # would take half of it. serve gives them a quarter, and keeps request bodies over
    # 4 MiB (1/128) out of memory.
    wrapper, limit = memory_cgroup
    write_add_model(opt_ml / "model", count=4)
    server = start_serve(
        opt_ml, wrapper=wrapper, SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE=str(64 * MIB)
    ).wait_ready()
    assert f"memory: a cgroup memory limit of {limit} bytes (512 MiB)" in server.output
    assert f"leaves {limit // 4} bytes of it for /dev/shm, too little for 4" in server.output
    # A quarter of 512 MiB for the 4 instances and the model's config stub.
    assert f"lowering it to {25 * MIB} bytes so they fit" in server.output
    assert f"shm-default-byte-size={25 * MIB}" in server.output
    assert f"request bodies over {4 * MIB} bytes go to disk" in server.output
    nginx_conf = (server.workspace() / "front" / "nginx.conf").read_text()
    assert f"client_body_buffer_size {4 * MIB};" in nginx_conf
    # And it serves, within the limit, a body larger than the buffer too.
    response = requests.post(
        f"{server.url}/invocations",
        json={**add_request([1, 1, 1, 1], [2, 2, 2, 2]), "padding": "x" * (5 * MIB)},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [3, 3, 3, 3]
