"""What the host offers that SageMaker cannot be asked for: GPUs, CPUs and /dev/shm."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from serve.errors import ConfigError
from serve.machine import cgroups
from serve.settings import MEBIBYTE
from serve.triton import model_config
from serve.triton.model_config import ModelConfig

log = logging.getLogger(__name__)

NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")
VMSTAT = Path("/proc/vmstat")
SHM_PATH = Path("/dev/shm")
# Below this the Python backend cannot hold even a small request.
MIN_SHM_REGION = MEBIBYTE


def gpu_count(visible_devices: str | None, nvidia_proc: Path = NVIDIA_PROC) -> int:
    """GPUs Triton will use: those the driver exposes, narrowed by CUDA_VISIBLE_DEVICES.

    An endpoint given some of a host's GPUs (an inference component's share)
    may get them as CUDA_VISIBLE_DEVICES rather than as fewer devices: CUDA,
    and so Triton, then sees only those, numbered from 0, and every default
    sized by GPUs (instances per GPU, --model-load-gpu-limit per device, the
    move of KIND_GPU models to the CPU) must count the same.
    """
    return visible_gpus(_driver_gpu_count(nvidia_proc), visible_devices)


def visible_gpus(present: int, cuda_visible_devices: str | None) -> int:
    """How many of `present` GPUs CUDA enumerates under CUDA_VISIBLE_DEVICES.

    Entries are indexes or UUIDs (GPU-..., MIG-...). CUDA stops at the first
    entry it cannot use (so "" and "-1" hide every GPU), and a device named
    twice hides them all (checked with torch on a 1-GPU H200 host: "0,1" and
    "GPU-<its uuid>" give 1 device; "1,0", "0,0", "" and "-1" give none).
    """
    if cuda_visible_devices is None:
        return present
    seen: set[str] = set()
    for entry in (part.strip() for part in cuda_visible_devices.split(",")):
        usable = (entry.isdigit() and int(entry) < present) or entry.startswith(("GPU-", "MIG-"))
        if not usable:
            break
        if entry in seen:
            return 0
        seen.add(entry)
    return min(len(seen), present)


def _driver_gpu_count(nvidia_proc: Path) -> int:
    """GPUs the NVIDIA driver exposes to this container (0 on a CPU host)."""
    if nvidia_proc.is_dir():
        return len(list(nvidia_proc.iterdir()))
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())


@dataclasses.dataclass(frozen=True)
class CpuShare:
    """The CPUs this process may use: those in its affinity mask, and its cgroup quota."""

    # CPUs in the affinity mask (`docker run --cpuset-cpus` narrows it).
    affinity: int
    # CPUs' worth of time per period from the cgroup quota (`docker run --cpus`,
    # inference components), None when there is none.
    quota: float | None = None

    @property
    def count(self) -> int:
        """Whole CPUs to size thread pools by: the mask, lowered to the quota rounded up."""
        if self.quota is None:
            return self.affinity
        return max(1, min(self.affinity, math.ceil(self.quota)))

    @property
    def quota_limited(self) -> bool:
        """True when the quota, not the mask, sets the count: libraries would oversubscribe."""
        return self.count < self.affinity

    def describe(self) -> str:
        if not self.quota_limited:
            return f"{self.count} CPUs"
        return (
            f"{self.count} CPUs: a cgroup quota of {self.quota:.2f} CPUs "
            f"of the {self.affinity} this process may run on"
        )


def cpu_share(proc_self: Path = cgroups.PROC_SELF) -> CpuShare:
    """This process's CPUs: the affinity mask and the cgroup quota (serve/machine/cgroups.py)."""
    return CpuShare(len(os.sched_getaffinity(0)), cgroups.cpu_quota(proc_self))


def threads_per_instance(cpus: CpuShare, instances: int) -> int | None:
    """OpenMP threads for each of `instances` model processes sharing `cpus`.

    Each Python-backend instance is a process whose PyTorch (and BLAS) starts
    one thread per CPU of its affinity mask by default, so N instances busy at
    once run N threads per CPU, which spin and preempt each other. Sharing the
    CPUs out keeps one thread per CPU in all. A cgroup quota below the mask
    (an inference component's share of the host) is invisible to those
    libraries, so it counts even for one instance. None (leave the libraries'
    own default) for a single instance that has the mask's CPUs to itself.
    """
    if instances <= 1 and not cpus.quota_limited:
        return None
    return max(1, cpus.count // max(1, instances))


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
    plan = ShmPlan(region_bytes, instances)
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
