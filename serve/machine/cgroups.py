"""The CPU quota and memory limit the kernel's control groups give this process (v1 and v2).

A container's share of a host's CPUs arrives in two ways: fewer CPUs in its
affinity mask (`docker run --cpuset-cpus`), which `os.sched_getaffinity`
sees, or a quota of CPU time per period (`docker run --cpus`, Kubernetes
limits, SageMaker inference components), which nothing in Python's standard
library sees, nor OpenMP or PyTorch: they start a thread per CPU in the mask
and the quota throttles them all. This module reads the quota.

A quota applies to a group and every group below it, so the effective limit
is the smallest one on the way from this process's group up to the root of
its hierarchy. Both layouts are read, since hybrid hosts mount both:

- v2: `cpu.max` holds "QUOTA PERIOD" (microseconds) or "max PERIOD";
- v1: `cpu.cfs_quota_us` (-1: none) and `cpu.cfs_period_us`, in the hierarchy
  that has the `cpu` controller.

Where each hierarchy is mounted, and which part of it this process sees, comes
from /proc/self/mountinfo and /proc/self/cgroup, so containers with or
without a cgroup namespace are read alike. CPU shares (`cpu.weight`,
`cpu.shares`) are relative weights, not limits, and are not read (the JVM
stopped counting them for the same reason, JDK-8281181).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

PROC_SELF = Path("/proc/self")
_ESCAPE = re.compile(r"\\([0-7]{3})")
# v1 writes "no limit" as PAGE_COUNTER_MAX pages in bytes, just under 2**63; anything
# from 2**62 up is no limit a machine could have.
_NO_MEMORY_LIMIT = 2**62


@dataclasses.dataclass(frozen=True)
class Mount:
    """One cgroup hierarchy as mounted: where, and which of its groups is the mount's root."""

    version: int
    mount_point: Path
    root: str

    def group_folder(self, group: str) -> Path | None:
        """The folder of `group` (a path as /proc/self/cgroup names it) under this mount."""
        root = self.root.rstrip("/")
        if group != root and not group.startswith(root + "/"):
            return None
        return self.mount_point / group[len(root) :].lstrip("/")


def cpu_quota(proc_self: Path = PROC_SELF) -> float | None:
    """CPUs' worth of time per period this process may use, or None when unlimited."""
    return _smallest(proc_self, "cpu", _quota_v1, _quota_v2)


def memory_limit(proc_self: Path = PROC_SELF) -> int | None:
    """Bytes of memory this process's group may use, or None when unlimited."""
    limit = _smallest(proc_self, "memory", _memory_v1, _memory_v2)
    return None if limit is None else int(limit)


Reader = Callable[[Path], "float | None"]


def _smallest(proc_self: Path, controller: str, read_v1: Reader, read_v2: Reader) -> float | None:
    """The smallest limit `controller` sets on this process, over both hierarchies."""
    try:
        groups = _groups(proc_self / "cgroup", controller)
        mounts = _mounts(proc_self / "mountinfo", controller)
    except OSError as exc:
        log.debug("cannot read this process's cgroups: %s", exc)
        return None
    limits = []
    for mount in mounts:
        group = groups.get(mount.version)
        folder = mount.group_folder(group) if group is not None else None
        if folder is None:
            continue
        limit = _smallest_on_the_way_up(folder, mount, read_v2 if mount.version == 2 else read_v1)
        if limit is not None:
            limits.append(limit)
    return min(limits, default=None)


def _groups(path: Path, controller: str) -> dict[int, str]:
    """This process's group per version: the v2 group ("0::PATH"), the v1 `controller` one."""
    groups: dict[int, str] = {}
    for line in path.read_text(errors="surrogateescape").splitlines():
        number, controllers, group = [*line.split(":", 2), "", ""][:3]
        if number == "0" and not controllers:
            groups[2] = group
        elif controller in controllers.split(","):
            groups[1] = group
    return groups


def _mounts(path: Path, controller: str) -> list[Mount]:
    """The v2 hierarchy and the v1 one holding `controller`, as mounted here."""
    mounts = []
    for line in path.read_text(errors="surrogateescape").splitlines():
        fields, _, filesystem = line.partition(" - ")
        parts, fs_parts = fields.split(), filesystem.split()
        if len(parts) < 5 or len(fs_parts) < 3:
            continue
        root, mount_point = _unescape(parts[3]), Path(_unescape(parts[4]))
        if fs_parts[0] == "cgroup2":
            mounts.append(Mount(2, mount_point, root))
        elif fs_parts[0] == "cgroup" and controller in fs_parts[2].split(","):
            mounts.append(Mount(1, mount_point, root))
    return mounts


def _unescape(text: str) -> str:
    """mountinfo writes spaces, tabs, newlines and backslashes as octal escapes."""
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), text)


def _smallest_on_the_way_up(folder: Path, mount: Mount, read: Reader) -> float | None:
    """The smallest limit from `folder` up to the mount point."""
    smallest: float | None = None
    current = folder
    while True:
        limit = read(current)
        if limit is not None and (smallest is None or limit < smallest):
            smallest = limit
        if current == mount.mount_point or current.parent == current:
            return smallest
        current = current.parent


def _quota_v2(folder: Path) -> float | None:
    try:
        quota, _, period = (folder / "cpu.max").read_text(errors="replace").strip().partition(" ")
    except OSError:
        return None
    return _ratio(quota, period or "100000")


def _quota_v1(folder: Path) -> float | None:
    try:
        quota = (folder / "cpu.cfs_quota_us").read_text(errors="replace").strip()
        period = (folder / "cpu.cfs_period_us").read_text(errors="replace").strip()
    except OSError:
        return None
    return _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    """Quota over period; None for "max", -1 or anything unreadable."""
    try:
        value, length = int(quota), int(period)
    except ValueError:
        return None
    if value <= 0 or length <= 0:
        return None
    return value / length


def _memory_v2(folder: Path) -> float | None:
    try:
        return _bytes((folder / "memory.max").read_text(errors="replace").strip())
    except OSError:
        return None


def _memory_v1(folder: Path) -> float | None:
    try:
        return _bytes((folder / "memory.limit_in_bytes").read_text(errors="replace").strip())
    except OSError:
        return None


def _bytes(text: str) -> float | None:
    """A limit in bytes; None for "max", v1's no-limit value or anything unreadable."""
    try:
        value = int(text)
    except ValueError:
        return None
    if value <= 0 or value >= _NO_MEMORY_LIMIT:
        return None
    return float(value)
