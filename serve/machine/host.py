"""What the host offers that SageMaker cannot be asked for: GPUs, CPUs, memory and /dev/shm."""

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
from serve.settings import MEBIBYTE, Settings
from serve.triton import model_config
from serve.triton.model_config import ModelConfig

log = logging.getLogger(__name__)

NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")
VMSTAT = Path("/proc/vmstat")
SHM_PATH = Path("/dev/shm")
# Below this the Python backend cannot hold even a small request.
MIN_SHM_REGION = MEBIBYTE
# How serve shares out a cgroup memory limit (an inference component's memory, `docker
# run --memory`) among what it sizes itself; the rest is Triton's and the models'. The
# Python backend's /dev/shm regions are charged to the group like any memory: at most a
# quarter of the limit. A request body held in memory (nginx and the payload service
# keep bodies up to SERVE_BODY_BUFFER_BYTES, larger ones go to disk): 1/128 of it, so
# a hundred such requests at once still leave room. A v2 JSON writer (a Python
# process with answers in flight): one per 256 MiB.
SHM_MEMORY_SHARE = 4
BODY_BUFFER_MEMORY_SHARE = 128
MIN_BODY_BUFFER = 64 * 1024
WRITER_MEMORY_BYTES = 256 * MEBIBYTE


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


@dataclasses.dataclass(frozen=True)
class MemoryShare:
    """The memory this process's cgroup may use (None: no limit), and what fits in it."""

    limit: int | None = None

    @property
    def shm_bytes(self) -> int | None:
        """The most the Python backend's /dev/shm regions may take of the limit."""
        return None if self.limit is None else self.limit // SHM_MEMORY_SHARE

    def body_buffer(self, wanted: int) -> int:
        """Request bodies up to this many bytes stay in memory; `wanted` at most."""
        if self.limit is None:
            return wanted
        return min(wanted, max(MIN_BODY_BUFFER, self.limit // BODY_BUFFER_MEMORY_SHARE))

    def writers(self, wanted: int) -> int:
        """v2 JSON writer processes that fit; `wanted` at most."""
        if self.limit is None:
            return wanted
        return min(wanted, self.limit // WRITER_MEMORY_BYTES)

    def describe(self) -> str:
        if self.limit is None:
            return "no cgroup memory limit"
        return f"a cgroup memory limit of {self.limit} bytes ({self.limit // MEBIBYTE} MiB)"


def memory_share(proc_self: Path = cgroups.PROC_SELF) -> MemoryShare:
    """This process's cgroup memory limit (serve/machine/cgroups.py)."""
    return MemoryShare(cgroups.memory_limit(proc_self))


def fit_to_memory(settings: Settings, memory: MemoryShare) -> Settings:
    """Settings whose memory-sized defaults fit `memory`, with a line saying what changed.

    Only serve's own defaults move: a SERVE_BODY_BUFFER_BYTES or
    SERVE_V2_JSON_WRITERS you set is kept as it is (writers are fitted where
    they are counted, by `writers`).
    """
    if memory.limit is None:
        return settings
    fitted = []
    buffer = settings.body_buffer_bytes
    if not settings.body_buffer_chosen:
        buffer = memory.body_buffer(settings.body_buffer_bytes)
        if buffer != settings.body_buffer_bytes:
            fitted.append(
                f"request bodies over {buffer} bytes go to disk (SERVE_BODY_BUFFER_BYTES, "
                f"{settings.body_buffer_bytes} unfitted)"
            )
    log.info(
        "memory: %s; the Python backend's /dev/shm regions fit in %d bytes of it%s",
        memory.describe(),
        memory.shm_bytes or 0,
        "; " + "; ".join(fitted) if fitted else "",
    )
    return dataclasses.replace(settings, body_buffer_bytes=buffer)


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
    configs: Iterable[ModelConfig],
    region_bytes: int,
    gpus: int,
    shm_path: Path = SHM_PATH,
    memory: MemoryShare | None = None,
) -> ShmPlan:
    """Fit the Python backend's per-instance shared memory into /dev/shm and the memory limit.

    Each Python-backend instance maps a region of `shm-default-byte-size` in
    /dev/shm. SageMaker cannot raise /dev/shm (there is no --shm-size), so when
    the regions do not fit, the size is lowered to fit with a warning, or, when
    not even the minimum fits, start-up stops with the numbers. Under a cgroup
    memory limit /dev/shm's pages are the group's memory: the regions fit in
    their share of it too (MemoryShare.shm_bytes). Each Python model also
    starts a stub of its own to complete its config, with a region of the same
    size, while other models' instances may be starting (models load in
    parallel): the regions fit with one more per model.
    """
    python = [config for config in configs if model_config.is_python_backend(config)]
    instances = sum(model_config.instance_count(config, gpus) for config in python)
    regions = instances + len(python)
    stat = os.statvfs(shm_path)
    available = stat.f_bavail * stat.f_frsize
    where = f"{shm_path} has {available} bytes free"
    if memory is not None and memory.shm_bytes is not None and memory.shm_bytes < available:
        available = memory.shm_bytes
        where = f"{memory.describe()} leaves {available} bytes of it for {shm_path}"
    plan = ShmPlan(region_bytes, instances)
    if instances == 0 or regions * region_bytes <= available:
        return plan
    fitted = (available // regions) // MEBIBYTE * MEBIBYTE
    if fitted < MIN_SHM_REGION:
        raise ConfigError(
            f"{where}, too little for {instances} Python-backend instances at even "
            f"{MIN_SHM_REGION} bytes each and the config stubs of {len(python)} models; "
            f"reduce instance counts or run where {shm_path} "
            "(docker run --shm-size) or the memory (an inference component's "
            "MinMemoryRequiredInMb) is larger"
        )
    log.warning(
        "%s, too little for %d Python-backend instances at %d bytes each "
        "(SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE) and the config stubs of %d models; "
        "lowering it to %d bytes so they fit",
        where,
        instances,
        region_bytes,
        len(python),
        fitted,
    )
    return dataclasses.replace(plan, region_bytes=fitted)
