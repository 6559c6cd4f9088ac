"""What the host offers that SageMaker cannot be asked for: GPUs, CPUs and /dev/shm."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from serve import model_config
from serve.errors import ConfigError
from serve.model_config import ModelConfig
from serve.settings import MEBIBYTE

log = logging.getLogger(__name__)

NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")
VMSTAT = Path("/proc/vmstat")
SHM_PATH = Path("/dev/shm")
# Below this the Python backend cannot hold even a small request.
MIN_SHM_REGION = MEBIBYTE


def gpu_count() -> int:
    """GPUs the NVIDIA driver exposes to this container (0 on a CPU host)."""
    if NVIDIA_PROC.is_dir():
        return len(list(NVIDIA_PROC.iterdir()))
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())


def cpu_count() -> int:
    """CPUs this process may run on: its affinity mask, which `docker --cpuset-cpus` narrows."""
    return len(os.sched_getaffinity(0))


def threads_per_instance(cpus: int, instances: int) -> int | None:
    """OpenMP threads for each of `instances` model processes sharing `cpus` CPUs.

    Each Python-backend instance is a process whose PyTorch (and BLAS) starts
    one thread per CPU by default, so N instances busy at once run N threads
    per CPU, which spin and preempt each other. Sharing the CPUs out keeps
    one thread per CPU in all. None (leave the libraries' own default) for a
    single instance, which has the CPUs to itself.
    """
    if instances <= 1:
        return None
    return max(1, cpus // instances)


def oom_kill_count() -> int:
    """Processes the kernel's OOM killer has killed since boot (0 if unknown)."""
    try:
        for line in VMSTAT.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


@dataclasses.dataclass(frozen=True)
class ShmPlan:
    region_bytes: int
    instances: int
    available_bytes: int


def plan_python_shm(
    configs: Iterable[ModelConfig], region_bytes: int, gpus: int, shm_path: Path = SHM_PATH
) -> ShmPlan:
    """Fit the Python backend's per-instance shared memory into /dev/shm.

    Each Python-backend instance maps a region of `shm-default-byte-size` in
    /dev/shm. SageMaker cannot raise /dev/shm (there is no --shm-size), so when
    the regions do not fit, the size is lowered to fit with a warning, or, when
    not even the minimum fits, start-up stops with the numbers.
    """
    instances = sum(
        model_config.instance_count(config, gpus)
        for config in configs
        if model_config.is_python_backend(config)
    )
    stat = os.statvfs(shm_path)
    available = stat.f_bavail * stat.f_frsize
    plan = ShmPlan(region_bytes, instances, available)
    if instances == 0 or instances * region_bytes <= available:
        return plan
    fitted = (available // instances) // MEBIBYTE * MEBIBYTE
    if fitted < MIN_SHM_REGION:
        raise ConfigError(
            f"{shm_path} has {available} bytes free, too little for {instances} Python-backend "
            f"instances at even {MIN_SHM_REGION} bytes each; reduce instance counts or run "
            f"where {shm_path} is larger (docker run --shm-size)"
        )
    log.warning(
        "%s has %d bytes free, too little for %d Python-backend instances at %d bytes each "
        "(SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE); lowering it to %d bytes so they fit",
        shm_path,
        available,
        instances,
        region_bytes,
        fitted,
    )
    return dataclasses.replace(plan, region_bytes=fitted)
