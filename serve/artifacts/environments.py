"""Conda-pack environments named by `EXECUTION_ENV_PATH`, checked and unpacked once.

Triton's Python backend unpacks an environment archive for every model that
names it, on every load, never runs `conda-unpack`, and reports a wrong
archive late and obscurely. Here each archive is checked before Triton sees
it and unpacked once into a cache addressed by the archive's sha256, shared
by every model and every later start that names the same bytes; the prepared
model's `EXECUTION_ENV_PATH` then names the unpacked folder, which the
backend accepts in place of an archive.

The cache folder holds, per environment:

- `<sha256>/`: the environment, complete and conda-unpacked;
- `<sha256>.used`: written last, so it marks the folder complete; holds the
  folder's size in bytes, and its mtime is the last use (for eviction);
- `<sha256>.lock`: locked (flock) while the entry is prepared, checked or
  removed, so processes sharing the cache never see half an environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from serve.artifacts.archives import ExtractionLimits, discard_interrupted, safe_extract
from serve.errors import ArtifactError, ConfigError
from serve.machine.users import PopenUser, RunAs, popen_user

log = logging.getLogger(__name__)

MODEL_DIRECTORY_VARIABLE = "$$TRITON_MODEL_DIRECTORY"

_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PYTHON_LIB = re.compile(r"python(\d+\.\d+)")
_CONDA_UNPACK_TIMEOUT_S = 900
_HOW_TO_PACK = (
    "make one with conda-pack (`conda pack -p <env> -o env.tar.gz`), or from a virtual "
    "environment created with `python -m venv --copies` with venv-pack "
    "(`venv-pack -p <env> -o env.tar.gz`)"
)


@dataclass(frozen=True)
class PreparedEnvironment:
    """An unpacked environment that a model's `EXECUTION_ENV_PATH` can name."""

    path: Path
    # "3.11": the Python backend stub that runs the model must be built for it.
    python_version: str
    sha256: str
    cache_hit: bool


@dataclass(frozen=True)
class _Entry:
    sha256: str
    size: int
    last_used: float


def resolve_env_path(value: str, model_dir: Path) -> Path:
    """The archive an `EXECUTION_ENV_PATH` value names, as Triton would resolve it.

    `$$TRITON_MODEL_DIRECTORY` stands for the model's folder, so `model_dir`
    must be the user's model folder, where the archive was shipped. A relative
    path is refused: Triton would resolve it against its working directory,
    which in the image means nothing to the user.
    """
    resolved = Path(
        os.path.normpath(value.replace(MODEL_DIRECTORY_VARIABLE, str(model_dir.absolute())))
    )
    if not resolved.is_absolute():
        raise ArtifactError(
            f"EXECUTION_ENV_PATH {value!r} of the model in {model_dir} is a relative path; "
            f"write it as {MODEL_DIRECTORY_VARIABLE}/<archive> or as an absolute path"
        )
    return resolved


class EnvironmentCache:
    """Environment archives unpacked once into `root`, keyed by their sha256.

    `hits`, `misses` and `bytes_extracted` count this instance's work, for
    metrics. Several instances and processes may share one `root`. `run_as`:
    the user an environment's `conda-unpack` runs as (Triton's, when serve is
    root), given only the environment's own folder to write.
    """

    def __init__(self, root: Path, limits: ExtractionLimits, run_as: RunAs | None = None) -> None:
        self.root = root
        self.limits = limits
        self.run_as = run_as
        self.hits = 0
        self.misses = 0
        self.bytes_extracted = 0
        # (path, device, inode, size, mtime) -> sha256: models naming the same
        # file hash it once per instance.
        self._digests: dict[tuple[str, int, int, int, int], str] = {}
        if not root.exists() and not root.is_symlink():
            root.mkdir(parents=True)
            root.chmod(0o755)  # whatever the umask: no one else writes here
        _check_private(root)
        closed = run_as.closed_folder(root / "entry") if run_as else None
        if run_as is not None and closed is not None:
            raise ConfigError(
                f"SERVE_ENV_CACHE={root}: Triton runs as {run_as.name} and cannot enter "
                f"{closed}, so it could not read the environments unpacked there; point "
                "SERVE_ENV_CACHE at a folder others may enter (the default, under /tmp)"
            )

    def materialize(
        self, archive: Path, available_stubs: Mapping[str, Path]
    ) -> PreparedEnvironment:
        """The unpacked environment of `archive`, unpacking and checking it on first use.

        `available_stubs` maps the Python versions the server has a Python
        backend stub for ("3.11") to the stub; an environment for any other
        Python is refused with `ArtifactError`, as are archives that are not
        conda-pack or venv-pack environments.
        """
        if not archive.is_file():
            raise ArtifactError(
                f"environment archive {archive} does not exist or is not a file; "
                f"EXECUTION_ENV_PATH must name an environment archive: {_HOW_TO_PACK}"
            )
        sha256 = self._digest(archive)
        path = self.root / sha256
        with self._lock(sha256):
            cache_hit = self._is_complete(sha256)
            if cache_hit:
                os.utime(self._stamp(sha256))
                python_version = _python_version(path, archive)
                _check_stub(archive, python_version, available_stubs)
            else:
                python_version = self._prepare(archive, sha256, available_stubs)
        if cache_hit:
            self.hits += 1
        else:
            self.misses += 1
        log.info(
            "Environment %s (Python %s) is %s (%s)",
            archive,
            python_version,
            path,
            "cached" if cache_hit else "newly unpacked",
        )
        return PreparedEnvironment(path, python_version, sha256, cache_hit)

    def evict(self, bytes_needed: int, in_use: Collection[str]) -> int:
        """Remove least recently used environments until `bytes_needed` bytes are freed.

        Returns the bytes freed, which is less than asked when everything left
        is in use. Never removes an environment whose sha256 is in `in_use`
        (those loaded models point at) or one another process is preparing.
        Folders left incomplete by a preparation that died go first.
        """
        freed = 0
        for entry in sorted(self._entries(), key=lambda entry: entry.last_used):
            if freed >= bytes_needed:
                break
            if entry.sha256 in in_use:
                continue
            with self._lock(entry.sha256, blocking=False) as acquired:
                if not acquired:
                    continue
                # The stamp goes first: a folder without it is incomplete.
                self._stamp(entry.sha256).unlink(missing_ok=True)
                shutil.rmtree(self.root / entry.sha256, ignore_errors=True)
            freed += entry.size
            log.info("Evicted environment %s (%d bytes)", entry.sha256, entry.size)
        return freed

    def _digest(self, archive: Path) -> str:
        stat = archive.stat()
        key = (str(archive.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = _sha256(archive)
        return self._digests[key]

    def _prepare(self, archive: Path, sha256: str, available_stubs: Mapping[str, Path]) -> str:
        """Unpack, check and conda-unpack `archive` into its entry; return its Python version."""
        path = self.root / sha256
        discard_interrupted(path)
        if path.exists():
            log.warning("Removing %s, left incomplete by an earlier preparation", path)
            shutil.rmtree(path)
        size = safe_extract(archive, path, self.limits)
        try:
            python_version = _checked_python(
                path,
                archive,
                available_stubs,
                f"environment archive {archive} has no bin/activate, so it is not a "
                f"conda-pack or venv-pack archive; {_HOW_TO_PACK}",
            )
            _run_conda_unpack(path, archive, self.run_as)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        partial = self.root / f".{sha256}.used.partial"
        partial.write_text(str(size))
        os.replace(partial, self._stamp(sha256))
        self.bytes_extracted += size
        return python_version

    def _is_complete(self, sha256: str) -> bool:
        return self._stamp(sha256).is_file() and (self.root / sha256).is_dir()

    def _stamp(self, sha256: str) -> Path:
        return self.root / f"{sha256}.used"

    def _entries(self) -> list[_Entry]:
        entries = []
        for path in self.root.iterdir():
            if not (_SHA256.fullmatch(path.name) and path.is_dir()):
                continue
            stamp = self._stamp(path.name)
            try:
                entries.append(_Entry(path.name, int(stamp.read_text()), stamp.stat().st_mtime))
            except (FileNotFoundError, ValueError):
                entries.append(_Entry(path.name, _tree_size(path), 0.0))
        return entries

    @contextlib.contextmanager
    def _lock(self, sha256: str, blocking: bool = True) -> Iterator[bool]:
        """Hold the entry's lock; yields False if `blocking` is off and another holder has it."""
        fd = os.open(self.root / f"{sha256}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
                acquired = True
            except BlockingIOError:
                acquired = False
            yield acquired
        finally:
            os.close(fd)


def _check_private(root: Path) -> None:
    """Refuse a cache folder someone else could have prepared or can still change.

    What the cache holds is trusted: a folder with its `.used` stamp is taken
    for an unpacked, checked environment and handed to Triton. So the folder
    must be serve's user's own, a real folder (not a link), writable by no one
    else, under folders no one else can rename it in (a sticky one, such as
    /tmp, lets no one rename another's entry).
    """
    status = root.lstat()
    problem = None
    if stat.S_ISLNK(status.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(status.st_mode):
        problem = "is not a folder"
    elif status.st_uid != os.geteuid():
        problem = f"is owned by another user (uid {status.st_uid})"
    elif status.st_mode & 0o022:
        problem = f"is writable by others (mode {stat.filemode(status.st_mode)})"
    else:
        for parent in root.resolve().parents:
            mode = parent.stat()
            if mode.st_uid not in (0, os.geteuid()):
                problem = f"lies under a folder another user owns ({parent})"
                break
            if mode.st_mode & 0o022 and not mode.st_mode & stat.S_ISVTX:
                problem = f"lies under a folder others can write ({parent})"
                break
    if problem is not None:
        raise ConfigError(
            f"SERVE_ENV_CACHE={root} {problem}: serve trusts what the environment cache "
            "holds, so it must be a folder of its own that no one else can write; remove "
            "it, or point SERVE_ENV_CACHE at such a folder"
        )


def inspect_folder(path: Path, available_stubs: Mapping[str, Path]) -> str:
    """The Python version of an environment that is already a folder, checked as archives are.

    Triton's Python backend accepts an unpacked environment as is; it still
    needs `bin/activate` and a Python some stub is built for.
    """
    return _checked_python(
        path,
        path,
        available_stubs,
        f"environment {path} has no bin/activate, so the Python backend cannot use it; "
        f"name an environment archive instead: {_HOW_TO_PACK}",
    )


def _checked_python(
    path: Path, source: Path, available_stubs: Mapping[str, Path], not_an_environment: str
) -> str:
    """The Python version of the environment at `path` (from `source`), which a stub must serve.

    The Python backend activates an environment with its bin/activate; without
    one, `not_an_environment` is the error.
    """
    if not (path / "bin" / "activate").is_file():
        raise ArtifactError(not_an_environment)
    python_version = _python_version(path, source)
    _check_stub(source, python_version, available_stubs)
    return python_version


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _python_version(path: Path, archive: Path) -> str:
    """The environment's Python, from its one `lib/pythonX.Y` folder."""
    lib = path / "lib"
    versions = sorted(
        match.group(1)
        for entry in (lib.iterdir() if lib.is_dir() else ())
        if (match := _PYTHON_LIB.fullmatch(entry.name))
        and entry.is_dir()
        and not entry.is_symlink()
    )
    if len(versions) != 1:
        found = ", ".join(f"lib/python{version}" for version in versions) or "none"
        raise ArtifactError(
            f"environment {archive} must hold exactly one lib/pythonX.Y folder "
            f"(found: {found}), so its Python version cannot be told; {_HOW_TO_PACK}"
        )
    return versions[0]


def _check_stub(archive: Path, python_version: str, available_stubs: Mapping[str, Path]) -> None:
    if python_version in available_stubs:
        return
    server_versions = sorted(available_stubs, key=lambda v: tuple(map(int, v.split("."))))
    suggested = server_versions[-1] if server_versions else "X.Y"
    raise ArtifactError(
        f"environment {archive} is built for Python {python_version}, but this "
        "server's Python backend has stubs only for Python "
        f"{', '.join(server_versions) or '(none)'}; rebuild the environment with Python "
        f"{suggested} (e.g. `conda create -p <env> python={suggested}`), or add a "
        f"triton_python_backend_stub built for Python {python_version} to the image "
        "(see the README)"
    )


def _run_conda_unpack(path: Path, archive: Path, run_as: RunAs | None = None) -> None:
    """Run the environment's `conda-unpack`, which rewrites its prefixes for this location.

    It runs where the environment stays for good: the prefixes it writes are
    this folder's. With the environment's own Python when there is one, as
    `source bin/activate; conda-unpack` would. The script is the archive's
    code: with `run_as` it runs as that user, the folder lent to it for the
    run and given back to serve's user after, so that neither the script nor
    model code later can change what the cache holds.
    """
    script = path / "bin" / "conda-unpack"
    if not script.is_file():
        return
    if run_as is None:
        _conda_unpack(path, archive, script, popen_user(None))
        return
    _give_tree(path, run_as.uid, run_as.gid)
    try:
        _conda_unpack(path, archive, script, popen_user(run_as))
    finally:
        _give_tree(path, os.geteuid(), os.getegid())


def _give_tree(path: Path, uid: int, gid: int) -> None:
    """Make everything under `path` (itself too) `uid`'s.

    Walked through folder descriptors, links never followed: what the script
    left there (links out, folders swapped for links) cannot lead the walk
    outside `path`.
    """
    os.chown(path, uid, gid, follow_symlinks=False)
    for _, subfolders, files, folder_fd in os.fwalk(path, follow_symlinks=False):
        for name in (*subfolders, *files):
            os.chown(name, uid, gid, dir_fd=folder_fd, follow_symlinks=False)


def _conda_unpack(path: Path, archive: Path, script: Path, user: PopenUser) -> None:
    """Run `script` (conda-unpack) in the environment at `path`; `user`: Popen's user arguments."""
    python = path / "bin" / "python"
    command = [str(python), str(script)] if python.is_file() else [str(script)]
    environment = {
        key: value for key, value in os.environ.items() if key not in ("PYTHONHOME", "PYTHONPATH")
    }
    environment["PATH"] = f"{path / 'bin'}{os.pathsep}{environment.get('PATH', '')}"
    started = time.monotonic()
    try:
        result = subprocess.run(
            command,
            cwd=path,
            env=environment,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_CONDA_UNPACK_TIMEOUT_S,
            check=False,
            **user,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ArtifactError(
            f"environment archive {archive}: conda-unpack could not run ({exc}); "
            "check that the environment was packed on linux-64 for this image"
        ) from exc
    if result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip())[-2000:]
        raise ArtifactError(
            f"environment archive {archive}: conda-unpack failed with exit code "
            f"{result.returncode}: {output}; check that the environment was packed with "
            "conda-pack on linux-64"
        )
    log.info("Ran conda-unpack in %s in %.2f s", path, time.monotonic() - started)


def _tree_size(path: Path) -> int:
    return sum(
        (Path(folder) / name).lstat().st_size
        for folder, _, files in os.walk(path)
        for name in files
    )
