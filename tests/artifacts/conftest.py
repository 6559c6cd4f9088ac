"""Archives for the artifact tests: hand-made tar members and real environment archives.

The environment archive is made the way users are told to make one without
conda: a virtual environment created with `python -m venv --copies`, packed
with venv-pack, and deleted before the archive is used, so a test that imports
from the unpacked copy proves relocation. It also carries a `bin/conda-unpack`
that does what conda-pack's does (rewrite the build-time prefix) so tests can
see it ran once, at the final location. Building it takes seconds, so it is
built once per test run behind a file lock, which pytest-xdist workers share.
"""

from __future__ import annotations

import bz2
import contextlib
import fcntl
import gzip
import io
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
# The stub files themselves are not read by the cache, only looked up by version.
STUBS = {PYTHON_VERSION: Path(f"/stubs/{PYTHON_VERSION}/triton_python_backend_stub")}
PREFIX_PLACEHOLDER = "/opt/conda-pack-placeholder-prefix"
PROBE_MODULE = "envonly_probe"

CONDA_UNPACK = f'''#!/usr/bin/env python
"""Does what conda-pack's conda-unpack does: writes the real prefix where the placeholder is."""
import os
from pathlib import Path

prefix = Path(os.path.abspath(__file__)).parent.parent
probe = prefix / "share" / "probe"
target = probe / "prefix.txt"
target.write_text(target.read_text().replace("{PREFIX_PLACEHOLDER}", str(prefix)))
with open(probe / "unpack-runs", "a") as runs:
    runs.write("ran\\n")
'''

Member = tuple[tarfile.TarInfo, bytes]


def member(
    name: str,
    data: bytes = b"",
    *,
    kind: bytes = tarfile.REGTYPE,
    linkname: str = "",
    mode: int = 0o644,
    mtime: int = 1_700_000_000,
) -> Member:
    """One tar member as a hostile or careless archiver could write it."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = mode
    info.mtime = mtime
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def directory(name: str) -> Member:
    return member(name, kind=tarfile.DIRTYPE, mode=0o755)


def tar_bytes(members: Iterable[Member]) -> bytes:
    """`members` as they are, no checks, as an uncompressed tar with its end-of-archive marker."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "none": bytes,
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
}


def write_tar(path: Path, members: Iterable[Member], compression: str = "gzip") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(COMPRESSORS[compression](tar_bytes(members)))
    return path


def pack_folder(folder: Path, archive: Path) -> Path:
    """Archive a folder's contents with `./` names, as `tar -C folder -czf archive .` does."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=".")
    return archive


def make_environment(
    folder: Path,
    *,
    python_version: str | None = PYTHON_VERSION,
    activate: bool = True,
    conda_unpack: str | None = None,
    marker: str = "",
) -> Path:
    """A conda-pack-shaped folder with no interpreter: enough for checks that never run Python.

    `marker` goes into a file so that environments differ in content (and sha256).
    """
    (folder / "bin").mkdir(parents=True)
    if activate:
        (folder / "bin" / "activate").write_text("# sourced by the Python backend\n")
    if python_version:
        site = folder / "lib" / f"python{python_version}" / "site-packages"
        site.mkdir(parents=True)
        (site / "marker.txt").write_text(marker)
    if conda_unpack is not None:
        script = folder / "bin" / "conda-unpack"
        script.write_text(conda_unpack)
        script.chmod(0o755)
    return folder


@dataclass(frozen=True)
class BuiltEnvironment:
    archive: Path
    # Where the environment was built; deleted before any test sees the archive.
    source: Path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def shared_folder(factory: pytest.TempPathFactory) -> Path:
    """A folder for this test run that all pytest-xdist workers see (each has its own basetemp)."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    base = factory.getbasetemp()
    folder = base.parent / f"artifacts-{run_id}" if run_id else base / "artifacts-shared"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def build_venv_pack_archive(folder: Path) -> BuiltEnvironment:
    """venv --copies, a module only the environment has, conda-unpack, venv-pack; source removed."""
    import venv_pack

    source = folder / "source-env"
    archive = folder / "venv-pack-env.tar.gz"
    shutil.rmtree(source, ignore_errors=True)  # from a build that was interrupted
    subprocess.run(
        [sys.executable, "-m", "venv", "--copies", "--without-pip", str(source)], check=True
    )
    site = source / "lib" / f"python{PYTHON_VERSION}" / "site-packages"
    (site / f"{PROBE_MODULE}.py").write_text('WHERE = "only inside the packed environment"\n')
    probe = source / "share" / "probe"
    probe.mkdir(parents=True)
    (probe / "prefix.txt").write_text(PREFIX_PLACEHOLDER)
    script = source / "bin" / "conda-unpack"
    script.write_text(CONDA_UNPACK)
    script.chmod(0o755)
    partial = folder / "venv-pack-env.partial.tar.gz"
    venv_pack.pack(prefix=str(source), output=str(partial), force=True)
    shutil.rmtree(source)
    partial.rename(archive)
    return BuiltEnvironment(archive, source)


@pytest.fixture(scope="session")
def venv_pack_env(tmp_path_factory: pytest.TempPathFactory) -> BuiltEnvironment:
    folder = shared_folder(tmp_path_factory)
    with file_lock(folder / "venv-pack-env.lock"):
        archive = folder / "venv-pack-env.tar.gz"
        if archive.is_file():
            return BuiltEnvironment(archive, folder / "source-env")
        return build_venv_pack_archive(folder)
