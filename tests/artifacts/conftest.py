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

from tests.conftest import CONTAINER_ENGINE

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


# What a Python-backend model needs from its environment besides its own
# imports: numpy below 2 (triton_python_backend_utils imports it).
NUMPY_PIN = "numpy==1.26.4"


def _pack_and_remove(source: Path, archive: Path) -> Path:
    import venv_pack

    partial = archive.with_name(f"{archive.name}.partial.tar.gz")
    venv_pack.pack(prefix=str(source), output=str(partial), force=True, compress_level=1)
    shutil.rmtree(source)
    partial.rename(archive)
    return archive


def build_serving_env(folder: Path) -> BuiltEnvironment:
    """An environment a real model runs in: serve's Python, numpy copied in, the probe module.

    numpy comes from serve's own environment (same Python, so same wheel);
    the probe module exists only here, so a model importing it proves that
    Triton ran it inside the unpacked copy.
    """
    import numpy

    source = folder / "serving-env-source"
    shutil.rmtree(source, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "venv", "--copies", "--without-pip", str(source)], check=True
    )
    site = source / "lib" / f"python{PYTHON_VERSION}" / "site-packages"
    installed = Path(numpy.__file__).parent
    shutil.copytree(installed, site / "numpy", ignore=shutil.ignore_patterns("tests", "*.pyc"))
    libs = installed.parent / "numpy.libs"
    if libs.is_dir():
        shutil.copytree(libs, site / "numpy.libs")
    (site / f"{PROBE_MODULE}.py").write_text('WHERE = "only inside the packed environment"\n')
    archive = _pack_and_remove(source, folder / "serving-env.tar.gz")
    return BuiltEnvironment(archive, source)


def find_python(wanted: Callable[[str], bool]) -> tuple[Path, str] | None:
    """An interpreter, built with a shared libpython, whose "major.minor" `wanted` accepts."""
    candidates: list[str | None] = []
    for minor in (12, 13, 10):
        candidates.append(shutil.which(f"python3.{minor}"))
        pyenv = Path.home() / ".pyenv" / "versions"
        candidates += [str(p) for p in sorted(pyenv.glob(f"3.{minor}.*/bin/python3.{minor}"))]
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [
                candidate,
                "-c",
                "import sys, sysconfig; print(f'{sys.version_info[0]}.{sys.version_info[1]}'); "
                "print(sysconfig.get_config_var('LIBDIR')); "
                "print(sysconfig.get_config_var('INSTSONAME') or '')",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode != 0:
            continue
        version, libdir, soname = probe.stdout.splitlines()
        if wanted(version) and soname and (Path(libdir) / soname).is_file():
            return Path(candidate), version
    return None


def other_python() -> tuple[Path, str] | None:
    """An interpreter of another Python version than serve's, built with a shared libpython."""
    return find_python(lambda version: version != PYTHON_VERSION)


def build_other_python_env(
    folder: Path, python: Path, version: str, *, bundle_libpython: bool = True
) -> BuiltEnvironment:
    """A Python `version` environment laid out as conda-pack lays one out: libpython in lib/.

    numpy is installed with that Python's pip (from its cache or the index);
    the base interpreter's standard library stays where it is (a venv).
    Without `bundle_libpython` the stub's own libpython serves, as in an
    image whose Python is the environment's.
    """
    source = folder / f"py{version}-env-source"
    shutil.rmtree(source, ignore_errors=True)
    subprocess.run(
        [str(python), "-m", "venv", "--copies", "--without-pip", str(source)], check=True
    )
    site = source / "lib" / f"python{version}" / "site-packages"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), NUMPY_PIN],
        check=True,
        timeout=300,
    )
    if bundle_libpython:
        libpython = subprocess.run(
            [
                str(python),
                "-c",
                "import sysconfig, os; print(os.path.join(sysconfig.get_config_var('LIBDIR'), "
                "sysconfig.get_config_var('INSTSONAME')))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        shutil.copy2(libpython, source / "lib" / Path(libpython).name)
    (site / f"{PROBE_MODULE}.py").write_text(f'WHERE = "only inside the Python {version} env"\n')
    suffix = "" if bundle_libpython else "-nolib"
    archive = _pack_and_remove(source, folder / f"py{version}{suffix}-env.tar.gz")
    return BuiltEnvironment(archive, source)


@pytest.fixture(scope="session")
def serving_env(tmp_path_factory: pytest.TempPathFactory) -> BuiltEnvironment:
    folder = shared_folder(tmp_path_factory)
    with file_lock(folder / "serving-env.lock"):
        archive = folder / "serving-env.tar.gz"
        if archive.is_file():
            return BuiltEnvironment(archive, folder / "serving-env-source")
        return build_serving_env(folder)


@dataclass(frozen=True)
class OtherPythonEnvironment:
    archive: Path
    python_version: str


@pytest.fixture(scope="session")
def other_python_env(tmp_path_factory: pytest.TempPathFactory) -> OtherPythonEnvironment:
    """A real environment for a Python other than serve's; skips when none can be built here."""
    found = other_python()
    if found is None:
        pytest.skip("no other Python with a shared libpython on this machine")
    python, version = found
    folder = shared_folder(tmp_path_factory)
    with file_lock(folder / "other-python-env.lock"):
        archive = folder / f"py{version}-env.tar.gz"
        if not archive.is_file():
            try:
                build_other_python_env(folder, python, version)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                pytest.skip(f"cannot build a Python {version} environment with {NUMPY_PIN}: {exc}")
    return OtherPythonEnvironment(archive, version)


@dataclass(frozen=True)
class TargetEnvironment:
    """An environment archive for the Python that serves it, local or in an image."""

    archive: Path
    python_version: str


def image_python(image: str) -> str:
    """The "major.minor" of an image's own Python, which its models run on by default."""
    return subprocess.run(
        [
            CONTAINER_ENGINE,
            "run",
            "--rm",
            "--network",
            "host",
            "--entrypoint",
            "python3",
            image,
            "-c",
            "import sys; print('%d.%d' % sys.version_info[:2])",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()


@pytest.fixture
def target_env(
    serve_target: str, serving_env: BuiltEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> TargetEnvironment:
    """serving_env for a local serve; for an image, the same made for the image's Python."""
    if serve_target == "local":
        return TargetEnvironment(serving_env.archive, PYTHON_VERSION)
    version = image_python(serve_target)
    found = find_python(lambda candidate: candidate == version)
    assert found is not None, f"no Python {version} with a shared libpython on this machine"
    folder = shared_folder(tmp_path_factory)
    with file_lock(folder / f"py{version}-nolib-env.lock"):
        archive = folder / f"py{version}-nolib-env.tar.gz"
        if not archive.is_file():
            build_other_python_env(folder, found[0], version, bundle_libpython=False)
    return TargetEnvironment(archive, version)
