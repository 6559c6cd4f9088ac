"""serve.artifacts.environments: environment archives checked, unpacked once, shared and evicted."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

from serve.artifacts.archives import ExtractionLimits
from serve.artifacts.environments import EnvironmentCache, resolve_env_path
from serve.errors import ArtifactError
from serve.machine.users import RunAs
from tests.artifacts.conftest import (
    PROBE_MODULE,
    PYTHON_VERSION,
    STUBS,
    BuiltEnvironment,
    make_environment,
    member,
    pack_folder,
    write_tar,
)

LIMITS = ExtractionLimits()


def cache_entries(root: Path) -> list[str]:
    """What the cache holds besides its lock files."""
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


def synthetic_archive(tmp_path: Path, name: str, **environment: Any) -> Path:
    folder = make_environment(tmp_path / "build" / name, **environment)
    return pack_folder(folder, tmp_path / "archives" / f"{name}.tar.gz")


def test_venv_pack_environment_is_unpacked_relocated_and_conda_unpacked(
    tmp_path: Path, venv_pack_env: BuiltEnvironment
) -> None:
    cache = EnvironmentCache(tmp_path / "cache", LIMITS)

    prepared = cache.materialize(venv_pack_env.archive, STUBS)

    assert not venv_pack_env.source.exists()
    sha256 = hashlib.sha256(venv_pack_env.archive.read_bytes()).hexdigest()
    assert prepared.sha256 == sha256
    assert prepared.path == tmp_path / "cache" / sha256
    assert prepared.python_version == PYTHON_VERSION
    assert not prepared.cache_hit
    assert (cache.hits, cache.misses) == (0, 1)
    with tarfile.open(venv_pack_env.archive) as tar:
        assert cache.bytes_extracted == sum(m.size for m in tar if m.isreg())
    # conda-unpack ran once, where the environment stays.
    probe = prepared.path / "share" / "probe"
    assert (probe / "prefix.txt").read_text() == str(prepared.path)
    assert (probe / "unpack-runs").read_text() == "ran\n"
    # The Python backend sources bin/activate: the module only the
    # environment has must come from the unpacked copy.
    shell = f'source "{prepared.path}/bin/activate" && python -c "{_PROBE}"'
    result = subprocess.run(
        ["bash", "-c", shell],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout) == {
        "prefix": str(prepared.path),
        "module": str(prepared.path / "lib" / f"python{PYTHON_VERSION}" / "site-packages"),
    }


_PROBE = (
    f"import json, os, sys, {PROBE_MODULE}; "
    f"print(json.dumps({{'prefix': sys.prefix, "
    f"'module': os.path.dirname({PROBE_MODULE}.__file__)}}))"
)


def test_second_use_is_a_hit_without_unpacking_again(
    tmp_path: Path, venv_pack_env: BuiltEnvironment
) -> None:
    cache = EnvironmentCache(tmp_path / "cache", LIMITS)
    first = cache.materialize(venv_pack_env.archive, STUBS)
    extracted = cache.bytes_extracted
    python = (first.path / "bin" / "python").stat()

    second = cache.materialize(venv_pack_env.archive, STUBS)

    assert second.cache_hit
    assert second.path == first.path
    assert (cache.hits, cache.misses, cache.bytes_extracted) == (1, 1, extracted)
    assert (first.path / "bin" / "python").stat().st_ino == python.st_ino
    assert (first.path / "share" / "probe" / "unpack-runs").read_text() == "ran\n"


def test_cache_is_shared_by_models_and_later_starts(
    tmp_path: Path, venv_pack_env: BuiltEnvironment
) -> None:
    """Another model shipping the same bytes, read by a new cache object (a new start)."""
    EnvironmentCache(tmp_path / "cache", LIMITS).materialize(venv_pack_env.archive, STUBS)
    other_model = tmp_path / "repository" / "other_model"
    other_model.mkdir(parents=True)
    copy = shutil.copy(venv_pack_env.archive, other_model / "python_env.tar.gz")

    later = EnvironmentCache(tmp_path / "cache", LIMITS)
    prepared = later.materialize(Path(copy), STUBS)

    assert prepared.cache_hit
    assert (later.hits, later.misses, later.bytes_extracted) == (1, 0, 0)
    assert len([p for p in cache_entries(tmp_path / "cache") if not p.endswith(".used")]) == 1


CONCURRENT_MATERIALIZE = textwrap.dedent(
    """
    import dataclasses, json, sys
    from pathlib import Path
    from serve.artifacts.archives import ExtractionLimits
    from serve.artifacts.environments import EnvironmentCache

    cache = EnvironmentCache(Path(sys.argv[1]), ExtractionLimits())
    prepared = cache.materialize(Path(sys.argv[2]), {sys.argv[3]: Path("stub")})
    print(json.dumps({"path": str(prepared.path), "hit": prepared.cache_hit}))
    """
)


def test_concurrent_processes_unpack_once(tmp_path: Path, venv_pack_env: BuiltEnvironment) -> None:
    root = tmp_path / "cache"
    command = [
        sys.executable,
        "-c",
        CONCURRENT_MATERIALIZE,
        str(root),
        str(venv_pack_env.archive),
        PYTHON_VERSION,
    ]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
        for _ in range(4)
    ]
    results = [json.loads(process.communicate(timeout=120)[0]) for process in processes]

    assert [process.returncode for process in processes] == [0] * 4
    assert len({result["path"] for result in results}) == 1
    assert sorted(result["hit"] for result in results) == [False, True, True, True]
    unpack_runs = Path(results[0]["path"]) / "share" / "probe" / "unpack-runs"
    assert unpack_runs.read_text() == "ran\n"
    assert not [p for p in cache_entries(root) if ".partial" in p]


def test_wrong_python_names_both_versions_and_the_fix(
    tmp_path: Path, venv_pack_env: BuiltEnvironment
) -> None:
    cache = EnvironmentCache(tmp_path / "cache", LIMITS)
    stubs = {"3.10": Path("stub-3.10"), "3.8": Path("stub-3.8")}

    with pytest.raises(ArtifactError) as refused:
        cache.materialize(venv_pack_env.archive, stubs)

    message = str(refused.value)
    assert str(venv_pack_env.archive) in message
    assert f"built for Python {PYTHON_VERSION}" in message
    assert "stubs only for Python 3.8, 3.10" in message
    assert "rebuild the environment with Python 3.10" in message
    assert f"triton_python_backend_stub built for Python {PYTHON_VERSION}" in message
    assert refused.value.status == 400
    assert cache_entries(tmp_path / "cache") == []


def test_wrong_python_is_refused_on_a_hit_too(
    tmp_path: Path, venv_pack_env: BuiltEnvironment
) -> None:
    cache = EnvironmentCache(tmp_path / "cache", LIMITS)
    cache.materialize(venv_pack_env.archive, STUBS)

    with pytest.raises(ArtifactError, match=f"built for Python {PYTHON_VERSION}"):
        cache.materialize(venv_pack_env.archive, {"3.10": Path("stub")})


def test_missing_activate_is_not_an_environment(tmp_path: Path) -> None:
    archive = synthetic_archive(tmp_path, "no-activate", activate=False)
    cache = EnvironmentCache(tmp_path / "cache", LIMITS)

    with pytest.raises(ArtifactError) as refused:
        cache.materialize(archive, STUBS)

    message = str(refused.value)
    assert f"environment archive {archive} has no bin/activate" in message
    assert "not a conda-pack or venv-pack archive" in message
    assert "conda pack -p <env> -o env.tar.gz" in message
    assert cache_entries(tmp_path / "cache") == []


@pytest.mark.parametrize("versions", [[], ["3.10", "3.11"]], ids=["none", "two"])
def test_python_version_must_be_unambiguous(tmp_path: Path, versions: list[str]) -> None:
    folder = make_environment(tmp_path / "env", python_version=None)
    for version in versions:
        (folder / "lib" / f"python{version}").mkdir(parents=True)
    archive = pack_folder(folder, tmp_path / "env.tar.gz")

    with pytest.raises(ArtifactError, match=r"exactly one lib/pythonX\.Y folder"):
        EnvironmentCache(tmp_path / "cache", LIMITS).materialize(archive, STUBS)


def test_conda_unpack_runs_as_an_executable_without_bin_python(tmp_path: Path) -> None:
    script = '#!/bin/sh\necho "$PWD" > "$(dirname "$0")/../unpacked-in"\n'
    archive = synthetic_archive(tmp_path, "sh-unpack", conda_unpack=script)

    prepared = EnvironmentCache(tmp_path / "cache", LIMITS).materialize(archive, STUBS)

    assert (prepared.path / "unpacked-in").read_text() == f"{prepared.path}\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can run a child as another user")
def test_conda_unpack_runs_as_triton_user_and_writes_only_its_folder(
    tmp_path: Path, enterable_tmp: Path
) -> None:
    # The script tries the cache beside its folder, and a new file of its own.
    script = (
        "#!/bin/sh\n"
        "id -u > by-uid\n"
        "touch ../planted 2> /dev/null && echo planted >> by-uid\n"
        "exit 0\n"
    )
    archive = synthetic_archive(tmp_path, "unpack-as", conda_unpack=script)
    entry = pwd.getpwnam("daemon")
    cache = EnvironmentCache(
        enterable_tmp / "cache", LIMITS, RunAs("daemon", entry.pw_uid, entry.pw_gid)
    )

    prepared = cache.materialize(archive, STUBS)

    assert (prepared.path / "by-uid").read_text() == f"{entry.pw_uid}\n"
    assert not (enterable_tmp / "cache" / "planted").exists()
    # Given back: neither the script nor model code can change the cached environment.
    owners = {path.lstat().st_uid for path in [prepared.path, *prepared.path.rglob("*")]}
    assert owners == {os.geteuid()}


def test_failing_conda_unpack_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    script = '#!/bin/sh\necho "cannot rewrite prefix" >&2\nexit 3\n'
    archive = synthetic_archive(tmp_path, "bad-unpack", conda_unpack=script)
    cache = EnvironmentCache(tmp_path / "cache", LIMITS)

    with pytest.raises(ArtifactError) as refused:
        cache.materialize(archive, STUBS)

    message = str(refused.value)
    assert "conda-unpack failed with exit code 3: cannot rewrite prefix" in message
    assert str(archive) in message
    assert cache_entries(tmp_path / "cache") == []
    assert cache.misses == 0


def test_hostile_environment_archive_is_refused(tmp_path: Path) -> None:
    archive = write_tar(
        tmp_path / "env.tar.gz",
        [member("bin/activate", b""), member("../../escaped", b"x")],
    )
    cache = EnvironmentCache(tmp_path / "cache", LIMITS)

    with pytest.raises(ArtifactError, match=r"'\.\./\.\./escaped' has '\.\.'"):
        cache.materialize(archive, STUBS)

    assert cache_entries(tmp_path / "cache") == []
    assert not (tmp_path / "escaped").exists()


def test_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        EnvironmentCache(tmp_path / "cache", LIMITS).materialize(tmp_path / "nope.tar.gz", STUBS)


def test_preparation_that_died_is_redone(tmp_path: Path) -> None:
    """A folder without its .used stamp, and a staging folder, as a killed process leaves them."""
    archive = synthetic_archive(tmp_path, "env")
    root = tmp_path / "cache"
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    (root / sha256 / "bin").mkdir(parents=True)
    (root / f".{sha256}.partial-x1y2" / "lib").mkdir(parents=True)

    prepared = EnvironmentCache(root, LIMITS).materialize(archive, STUBS)

    assert not prepared.cache_hit
    assert (prepared.path / "bin" / "activate").is_file()
    assert cache_entries(root) == [sha256, f"{sha256}.used"]


def test_evict_removes_least_recently_used_first_and_spares_in_use(tmp_path: Path) -> None:
    cache = EnvironmentCache(tmp_path / "cache", LIMITS)
    archives = {
        name: synthetic_archive(tmp_path, name, marker=name * 1000) for name in ("a", "b", "c")
    }
    prepared = {name: cache.materialize(archive, STUBS) for name, archive in archives.items()}
    cache.materialize(archives["a"], STUBS)  # a is now the most recently used
    size = cache.bytes_extracted // 3

    assert cache.evict(1, in_use=set()) == size
    assert not prepared["b"].path.exists()
    assert prepared["a"].path.exists() and prepared["c"].path.exists()

    assert cache.evict(10**12, in_use={prepared["a"].sha256}) == size
    assert not prepared["c"].path.exists()
    assert prepared["a"].path.exists()
    assert cache_entries(tmp_path / "cache") == [
        prepared["a"].sha256,
        f"{prepared['a'].sha256}.used",
    ]

    again = cache.materialize(archives["b"], STUBS)
    assert not again.cache_hit


def test_resolve_env_path(tmp_path: Path) -> None:
    model = tmp_path / "repo" / "tokenizer"
    assert resolve_env_path("$$TRITON_MODEL_DIRECTORY/env.tar.gz", model) == model / "env.tar.gz"
    assert (
        resolve_env_path("$$TRITON_MODEL_DIRECTORY/../shared/env.tar.gz", model)
        == tmp_path / "repo" / "shared" / "env.tar.gz"
    )
    assert resolve_env_path("/opt/envs/env.tar.gz", model) == Path("/opt/envs/env.tar.gz")
    with pytest.raises(ArtifactError, match=r"relative path; write it as \$\$TRITON_MODEL"):
        resolve_env_path("envs/env.tar.gz", model)
