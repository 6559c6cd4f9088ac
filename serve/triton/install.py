"""Finding the Triton server, its backends and Python-backend stubs.

The image has Triton at /opt/tritonserver; a workstation or CI run uses the
full server shipped in the `nvidia-pytriton` wheel. That wheel keeps its
Python-backend stubs per Python version outside `backends/python`, so when
the backend folder lacks a stub for the interpreter, `serve` builds an overlay
backends folder (links, nothing copied or modified) that has one.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from serve.errors import ConfigError

log = logging.getLogger(__name__)

# "major.minor" of the interpreter running serve: the Python-backend stub models get by default.
RUNNING_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"

IMAGE_BINARY = Path("/opt/tritonserver/bin/tritonserver")
STUB_NAME = "triton_python_backend_stub"
# Extra stubs for other Python versions: <dir>/<major.minor>/triton_python_backend_stub.
STUB_DIR_NAMES = ("python_backend_stubs",)
_LIBPYTHON = re.compile(rb"libpython(3\.\d+)")
_HELP_FLAG = re.compile(r"^\s+(--[a-z0-9-]+)", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class TritonInstall:
    """Where one Triton installation keeps its parts."""

    binary: Path
    backends_dir: Path
    # Python "major.minor" -> stub binary built for that version.
    python_stubs: dict[str, Path]

    @property
    def python_version(self) -> str:
        """The interpreter `serve` runs under, which models use by default."""
        return RUNNING_PYTHON

    @property
    def default_python(self) -> str:
        """The Python models run on unless given a stub of their own.

        That of the stub in the backends folder when there is one (the image's),
        else the interpreter `serve` runs under, whose stub `backends_folder` adds.
        """
        stub = self.backends_dir / "python" / STUB_NAME
        if stub.is_file():
            return stub_python_version(stub) or self.python_version
        return self.python_version

    def accepts(self, flag: str) -> bool:
        """Whether this release's command line has `flag`, as its --help lists it.

        Flags come and go between releases (--http-max-input-size came after 2.51),
        and Triton refuses to start on one it does not know.
        """
        return flag in help_flags(self.binary)

    def wrapped(self, folder: Path, script: str) -> Path:
        """An installation in `folder` whose bin/tritonserver is `script`; returns that file.

        Its backends and stubs are links to this installation's, so `locate_triton`
        finds every part beside the script. Benchmarks and tests use it to run the
        real server with flags of their own (TRITONSERVER_BIN).
        """
        root = self.binary.parent.parent
        (folder / "bin").mkdir(parents=True)
        (folder / "backends").symlink_to(self.backends_dir)
        for name in STUB_DIR_NAMES:
            if (root / name).is_dir():
                (folder / name).symlink_to(root / name)
        binary = folder / "bin" / "tritonserver"
        binary.write_text(script)
        binary.chmod(0o755)
        return binary

    def backends_folder(self, overlay: Path, extra: Sequence[Path] = ()) -> Path:
        """The backends folder Triton is given.

        The installation's own folder, unless its python backend lacks a stub
        for this interpreter or `extra` folders (SERVE_EXTRA_BACKENDS) add
        backends: then `overlay` gets links to every backend, the extra ones
        and the matching stub. Nothing of the installation is modified.
        """
        python_dir = self.backends_dir / "python"
        stub = self.python_stubs.get(self.python_version)
        if not python_dir.is_dir() or (python_dir / STUB_NAME).exists():
            stub = None  # no python backend, or its own stub serves
        if stub is None and not extra:
            return self.backends_dir
        overlay.mkdir(parents=True, exist_ok=True)
        for backend in self.backends_dir.iterdir():
            if backend.name != "python":
                (overlay / backend.name).symlink_to(backend)
        if python_dir.is_dir():
            # Copied, not linked: Triton refuses a Python-based backend whose
            # libtriton_python.so resolves outside the backends folder it was given.
            (overlay / "python").mkdir()
            # The stub stays a link: its libraries are found relative to it.
            for item in python_dir.iterdir():
                if item.name == STUB_NAME:
                    (overlay / "python" / item.name).symlink_to(item)
                elif item.is_file():
                    shutil.copy2(item, overlay / "python" / item.name)
        if stub is not None:
            (overlay / "python" / STUB_NAME).symlink_to(stub)
            log.info("using the Python %s backend stub %s", self.python_version, stub)
        for folder in extra:
            if not folder.is_dir():
                raise ConfigError(f"SERVE_EXTRA_BACKENDS names {folder}, which is not a folder")
            for backend in sorted(p for p in folder.iterdir() if p.is_dir()):
                if (overlay / backend.name).exists():
                    raise ConfigError(
                        f"backend {backend.name!r} in {folder} clashes with one Triton has; "
                        "rename its folder (and the backend field of its models)"
                    )
                (overlay / backend.name).symlink_to(backend.resolve())
                log.info("adding backend %r from %s", backend.name, backend)
        return overlay


def locate_triton(configured: Path | None) -> TritonInstall:
    """Find tritonserver: TRITONSERVER_BIN, the image's path, PATH, then nvidia-pytriton."""
    binary = _find_binary(configured)
    root = binary.parent.parent
    backends_dir = root / "backends"
    if not backends_dir.is_dir():
        raise ConfigError(
            f"Triton's backends folder {backends_dir} does not exist next to {binary}; "
            "point TRITONSERVER_BIN at a complete Triton installation"
        )
    stubs: dict[str, Path] = {}
    for folder in [root / name for name in STUB_DIR_NAMES]:
        if folder.is_dir():
            for candidate in sorted(folder.glob(f"*/{STUB_NAME}")):
                stubs[candidate.parent.name] = candidate
    default_stub = backends_dir / "python" / STUB_NAME
    if default_stub.is_file():
        version = stub_python_version(default_stub)
        if version:
            stubs.setdefault(version, default_stub)
    return TritonInstall(binary=binary, backends_dir=backends_dir, python_stubs=stubs)


@functools.cache
def help_flags(binary: Path) -> frozenset[str]:
    """The flags `binary --help` lists (Triton prints them to stderr and exits 1)."""
    try:
        listing = subprocess.run(
            [str(binary), "--help"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("could not list %s's flags (%s); assuming Triton 2.51's", binary, exc)
        return frozenset()
    return frozenset(_HELP_FLAG.findall(listing.stdout + listing.stderr))


def stub_python_version(stub: Path) -> str | None:
    """The Python major.minor a stub links against (its libpython dependency)."""
    with stub.open("rb") as handle:
        match = _LIBPYTHON.search(handle.read())
    return match.group(1).decode() if match else None


def _find_binary(configured: Path | None) -> Path:
    if configured is not None:
        if not (configured.is_file() and os.access(configured, os.X_OK)):
            raise ConfigError(f"TRITONSERVER_BIN={configured} is not an executable file")
        return configured.resolve()
    candidates = [IMAGE_BINARY]
    on_path = shutil.which("tritonserver")
    if on_path:
        candidates.append(Path(on_path))
    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates.append(Path(location) / "tritonserver" / "bin" / "tritonserver")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.resolve()
    raise ConfigError(
        "tritonserver was not found: set TRITONSERVER_BIN, install Triton at "
        f"{IMAGE_BINARY}, put it on PATH, or `pip install nvidia-pytriton` for a local server"
    )
