"""Reading CPU quotas and memory limits from prepared cgroup trees, v1 and v2.

The real v1 quota and limit, on this host's own hierarchies, are in
test_host.py; v2 needs a host whose controllers are on the unified
hierarchy, so its layouts are prepared here: a /proc/self (cgroup, mountinfo)
and a /sys/fs/cgroup under a temporary folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve.machine.cgroups import cpu_quota, memory_limit


def prepare(
    tmp_path: Path, cgroup: str, mounts: list[tuple[str, str, str, str]], files: dict[str, str]
) -> Path:
    """A fake /proc/self: mountinfo mounts (fstype, root, mount point, options) under tmp_path."""
    proc = tmp_path / "proc_self"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    lines = [
        f"{30 + i} 25 0:{40 + i} {root} {tmp_path}{point.replace(' ', chr(92) + '040')} "
        f"rw,nosuid shared:{i} - {fstype} cgroup rw,{options}"
        for i, (fstype, root, point, options) in enumerate(mounts)
    ]
    (proc / "mountinfo").write_text(
        "22 1 8:1 / / rw,relatime - ext4 /dev/root rw\n" + "\n".join(lines) + "\n"
    )
    for relative, text in files.items():
        path = tmp_path / relative.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return proc


def test_v2_in_a_cgroup_namespace_reads_the_containers_own_cpu_max(tmp_path: Path) -> None:
    # docker run --cpus=1.5 on a v2 host: the container's group is the mount's root.
    proc = prepare(
        tmp_path,
        "0::/\n",
        [("cgroup2", "/", "/sys/fs/cgroup", "nsdelegate")],
        {"/sys/fs/cgroup/cpu.max": "150000 100000\n"},
    )
    assert cpu_quota(proc) == 1.5


def test_v2_takes_the_smallest_quota_on_the_way_up(tmp_path: Path) -> None:
    # A quota on a parent (the pod, the inference component) binds a child without one.
    proc = prepare(
        tmp_path,
        "0::/kubepods/pod1/container2\n",
        [("cgroup2", "/", "/sys/fs/cgroup", "nsdelegate")],
        {
            "/sys/fs/cgroup/kubepods/cpu.max": "800000 100000\n",
            "/sys/fs/cgroup/kubepods/pod1/cpu.max": "50000 100000\n",
            "/sys/fs/cgroup/kubepods/pod1/container2/cpu.max": "max 100000\n",
        },
    )
    assert cpu_quota(proc) == 0.5


def test_v2_without_a_quota_is_unlimited(tmp_path: Path) -> None:
    proc = prepare(
        tmp_path,
        "0::/system.slice/serve.service\n",
        [("cgroup2", "/", "/sys/fs/cgroup", "nsdelegate")],
        {"/sys/fs/cgroup/system.slice/serve.service/cpu.max": "max 100000\n"},
    )
    assert cpu_quota(proc) is None


def test_v1_without_a_namespace_maps_the_group_below_the_mounts_root(tmp_path: Path) -> None:
    # Docker on v1: /proc/self/cgroup names /docker/ID, which is the mount's root.
    proc = prepare(
        tmp_path,
        "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n",
        [
            ("cgroup", "/docker/abc", "/sys/fs/cgroup/memory", "memory"),
            ("cgroup", "/docker/abc", "/sys/fs/cgroup/cpu,cpuacct", "cpu,cpuacct"),
        ],
        {
            "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "300000\n",
            "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            "/sys/fs/cgroup/memory/cpu.cfs_quota_us": "1000\n",  # not the cpu hierarchy
        },
    )
    assert cpu_quota(proc) == 3.0


def test_v1_minus_one_is_no_quota_and_a_parents_quota_binds(tmp_path: Path) -> None:
    proc = prepare(
        tmp_path,
        "3:cpu:/jobs/serve\n",
        [("cgroup", "/", "/sys/fs/cgroup/cpu", "cpu")],
        {
            "/sys/fs/cgroup/cpu/jobs/cpu.cfs_quota_us": "250000\n",
            "/sys/fs/cgroup/cpu/jobs/cpu.cfs_period_us": "100000\n",
            "/sys/fs/cgroup/cpu/jobs/serve/cpu.cfs_quota_us": "-1\n",
            "/sys/fs/cgroup/cpu/jobs/serve/cpu.cfs_period_us": "100000\n",
            "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
            "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cpu_quota(proc) == 2.5


def test_hybrid_hosts_read_the_v1_cpu_controller_beside_an_empty_v2(tmp_path: Path) -> None:
    # This machine's layout: cpu on v1, the unified hierarchy mounted without it.
    proc = prepare(
        tmp_path,
        "3:cpu:/serve\n2:cpuacct:/\n0::/\n",
        [
            ("cgroup", "/", "/sys/fs/cgroup/cpu", "cpu"),
            ("cgroup2", "/", "/sys/fs/cgroup/unified", ""),
        ],
        {
            "/sys/fs/cgroup/cpu/serve/cpu.cfs_quota_us": "100000\n",
            "/sys/fs/cgroup/cpu/serve/cpu.cfs_period_us": "100000\n",
            "/sys/fs/cgroup/unified/cgroup.procs": "",
        },
    )
    assert cpu_quota(proc) == 1.0


def test_mount_points_with_escaped_spaces_are_found(tmp_path: Path) -> None:
    proc = prepare(
        tmp_path,
        "0::/\n",
        [("cgroup2", "/", "/sys/fs/my cgroup", "")],
        {"/sys/fs/my cgroup/cpu.max": "200000 100000\n"},
    )
    assert cpu_quota(proc) == 2.0


@pytest.mark.parametrize(
    "cgroup",
    [
        "",  # no groups at all (not Linux-like)
        "0::/elsewhere\n",  # a group outside what is mounted here
    ],
)
def test_what_cannot_be_mapped_is_no_quota(tmp_path: Path, cgroup: str) -> None:
    proc = prepare(
        tmp_path,
        cgroup,
        [("cgroup2", "/inside", "/sys/fs/cgroup", "")],
        {"/sys/fs/cgroup/cpu.max": "100000 100000\n"},
    )
    assert cpu_quota(proc) is None


def test_no_proc_files_is_no_quota(tmp_path: Path) -> None:
    assert cpu_quota(tmp_path / "missing") is None


# --- memory ------------------------------------------------------------------------------------

GIB = 1024**3


def test_v2_memory_max_and_the_smallest_on_the_way_up(tmp_path: Path) -> None:
    # An inference component's copy: its own group has no limit, the copy's group does.
    proc = prepare(
        tmp_path,
        "0::/sagemaker/component/copy1/serve\n",
        [("cgroup2", "/", "/sys/fs/cgroup", "nsdelegate")],
        {
            "/sys/fs/cgroup/memory.max": "max\n",
            "/sys/fs/cgroup/sagemaker/memory.max": f"{64 * GIB}\n",
            "/sys/fs/cgroup/sagemaker/component/copy1/memory.max": f"{2 * GIB}\n",
            "/sys/fs/cgroup/sagemaker/component/copy1/serve/memory.max": "max\n",
        },
    )
    assert memory_limit(proc) == 2 * GIB


def test_v2_in_a_namespace_without_a_limit_is_unlimited(tmp_path: Path) -> None:
    proc = prepare(
        tmp_path,
        "0::/\n",
        [("cgroup2", "/", "/sys/fs/cgroup", "nsdelegate")],
        {"/sys/fs/cgroup/memory.max": "max\n"},
    )
    assert memory_limit(proc) is None


def test_v1_reads_the_memory_hierarchy_and_its_no_limit_value(tmp_path: Path) -> None:
    # Docker on v1 with --memory=1g; the host's root says "no limit" as v1 writes it.
    proc = prepare(
        tmp_path,
        "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n",
        [
            ("cgroup", "/", "/sys/fs/cgroup/memory", "memory"),
            ("cgroup", "/", "/sys/fs/cgroup/cpu,cpuacct", "cpu,cpuacct"),
        ],
        {
            "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
            "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": f"{GIB}\n",
            # Not the memory hierarchy: never read for memory.
            "/sys/fs/cgroup/cpu,cpuacct/docker/abc/memory.limit_in_bytes": "4096\n",
        },
    )
    assert memory_limit(proc) == GIB
    assert cpu_quota(proc) is None


def test_v1_no_limit_value_alone_is_unlimited(tmp_path: Path) -> None:
    # This machine's own layout: memory on v1, a group of its own, no limit anywhere.
    proc = prepare(
        tmp_path,
        "4:memory:/process_api/abc\n1:cpu:/\n0::/\n",
        [
            ("cgroup", "/", "/sys/fs/cgroup/memory", "memory"),
            ("cgroup2", "/", "/sys/fs/cgroup/unified", ""),
        ],
        {
            "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
            "/sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes": (
                "9223372036854771712\n"
            ),
        },
    )
    assert memory_limit(proc) is None


def test_hybrid_hosts_take_the_smaller_of_v1_and_v2_memory_limits(tmp_path: Path) -> None:
    proc = prepare(
        tmp_path,
        "4:memory:/serve\n0::/serve\n",
        [
            ("cgroup", "/", "/sys/fs/cgroup/memory", "memory"),
            ("cgroup2", "/", "/sys/fs/cgroup/unified", ""),
        ],
        {
            "/sys/fs/cgroup/memory/serve/memory.limit_in_bytes": f"{3 * GIB}\n",
            "/sys/fs/cgroup/unified/serve/memory.max": f"{GIB}\n",
        },
    )
    assert memory_limit(proc) == GIB


# Whatever a cgroup file holds (a kernel's, a container runtime's, a hostile bind
# mount's, bytes that are not UTF-8), reading it answers a limit or none, never raises.
_NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(lambda n: str(n).encode()),
    st.sampled_from([b"max", b"max 100000", b"-1", b"0", b"9223372036854771712", b"1e9", b" 12 "]),
)
_FILE_BYTES = st.one_of(st.binary(max_size=60), _NUMBERS)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    memory_max=_FILE_BYTES,
    limit_in_bytes=_FILE_BYTES,
    cpu_max=_FILE_BYTES,
    cgroup=st.one_of(st.binary(max_size=80), st.just(b"4:memory:/g\n0::/g\n")),
    mountinfo_tail=st.binary(max_size=80),
)
def test_hostile_cgroup_files_read_as_a_limit_or_none(
    tmp_path_factory: pytest.TempPathFactory,
    memory_max: bytes,
    limit_in_bytes: bytes,
    cpu_max: bytes,
    cgroup: bytes,
    mountinfo_tail: bytes,
) -> None:
    root = tmp_path_factory.mktemp("hostile")
    proc = prepare(
        root,
        "",
        [
            ("cgroup", "/", "/sys/fs/cgroup/memory", "memory"),
            ("cgroup2", "/", "/sys/fs/cgroup/unified", ""),
        ],
        {},
    )
    (proc / "cgroup").write_bytes(cgroup)
    with (proc / "mountinfo").open("ab") as mountinfo:
        mountinfo.write(mountinfo_tail)
    for relative, content in {
        "sys/fs/cgroup/memory/g/memory.limit_in_bytes": limit_in_bytes,
        "sys/fs/cgroup/unified/g/memory.max": memory_max,
        "sys/fs/cgroup/unified/g/cpu.max": cpu_max,
    }.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    limit = memory_limit(proc)
    assert limit is None or 0 < limit < 2**62
    quota = cpu_quota(proc)
    assert quota is None or quota > 0
