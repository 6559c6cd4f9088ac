"""The built image as SageMaker and people run it: entrypoint, PID 1, commands, layers.

Each test runs once for every image named with `--image` (`make test` builds
one on each release's stand-in base, build/standin/). The serving behaviour
itself is covered by the tests marked `container` elsewhere, which run the
same assertions against a local serve and against each image.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.build.test_dockerfile import LOCKS, pinned_requirements
from tests.conftest import (
    CONTAINER_ENGINE,
    EXAMPLES,
    REPO_ROOT,
    ContainerServe,
    ServeProcess,
    add_request,
    free_port,
    serve_env,
    write_add_model,
)

BANNER = "== Triton Inference Server =="
BUILD_LOGS = REPO_ROOT / ".work" / "images"


def engine(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CONTAINER_ENGINE, *args], capture_output=True, text=True, check=False, timeout=timeout
    )


def run_in_image(image: str, *command: str) -> subprocess.CompletedProcess[str]:
    """`docker run --rm IMAGE COMMAND...`: through the image's own ENTRYPOINT."""
    return engine("run", "--rm", "--network", "host", image, *command)


def bypass_entrypoint(image: str, program: str, *args: str) -> subprocess.CompletedProcess[str]:
    return engine("run", "--rm", "--network", "host", "--entrypoint", program, image, *args)


def inspect(image: str) -> dict:
    result = engine("image", "inspect", image)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[0]


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def namespace_pid(pid: int) -> int:
    """The process's PID inside its container (the last NSpid field)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^NSpid:\s+(.*)$", status, re.M).group(1).split()[-1])


StartContainer = Callable[..., ContainerServe]


@pytest.fixture
def start_container(tmp_path: Path, opt_ml: Path) -> Iterator[StartContainer]:
    """Run `image` on an /opt/ml tree holding the add model, with `command` after it."""
    write_add_model(opt_ml / "model")
    started: list[ContainerServe] = []

    def start(image: str, command: tuple[str, ...] = ("serve",)) -> ContainerServe:
        port = free_port()
        server = ContainerServe(image, serve_env(opt_ml, port), port, opt_ml, tmp_path, command)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_nvidias_entrypoint_runs_then_tini_runs_serve(
    image: str, start_container: StartContainer
) -> None:
    server = start_container(image).wait_ready()
    (tini,) = server.child_pids("tini")
    (serve,) = server.child_pids("serve")
    assert namespace_pid(tini) == 1
    assert f"PPid:\t{tini}\n" in Path(f"/proc/{serve}/status").read_text()
    # NVIDIA's entrypoint printed its banner and exported what its parts found:
    # no driver here (CPU-only), and the CUDA compat step ran before serve.
    assert server.output.lstrip().startswith("=" * 29), server.output[:500]
    assert server.output.index(BANNER) < server.output.index("serve.runtime.server")
    variables = environ(serve)
    assert variables["NVIDIA_CPU_ONLY"] == "1"
    assert variables["CUDA_COMPAT_CHECKED"] == "/usr/local/cuda/compat"
    # The project's serve, not the /usr/bin/serve of NVIDIA's base image.
    assert Path(f"/proc/{serve}/cmdline").read_bytes().split(b"\0")[1] == b"/usr/local/bin/serve"


def test_a_plain_run_serves_too(image: str, start_container: StartContainer) -> None:
    server = start_container(image, command=()).wait_ready()
    response = requests.post(
        f"{server.url}/invocations", json=add_request([1, 2, 3, 4], [1, 1, 1, 1]), timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [2, 3, 4, 5]


def test_the_readme_run_command_serves_the_bundled_examples(
    examples_image: str, examples_server: ServeProcess, tmp_path: Path
) -> None:
    """`docker run ... -v model_repository:/opt/ml/model:ro IMAGE`: the answers of a local serve."""
    opt_ml = tmp_path / "opt_ml"
    opt_ml.mkdir()
    (opt_ml / "model").symlink_to(EXAMPLES)
    port = free_port()
    env = serve_env(opt_ml, port, SAGEMAKER_TRITON_DEFAULT_MODEL_NAME="ncf_food")
    server = ContainerServe(examples_image, env, port, opt_ml, tmp_path, command=())
    try:
        server.wait_ready(timeout=300)
        scores = {"inputs": [
            {"name": "user_id", "shape": [3, 1], "datatype": "INT64", "data": [42, 42, 42]},
            {"name": "item_id", "shape": [3, 1], "datatype": "INT64", "data": [7, 19, 301]},
        ]}  # fmt: skip
        text = {"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}
        embedding = {"X-Amzn-SageMaker-Custom-Attributes": "target_model=sentence_embedding"}
        for body, headers in ((scores, {}), (text, embedding)):
            answers = [
                requests.post(f"{s.url}/invocations", json=body, headers=headers, timeout=60)
                for s in (server, examples_server)
            ]
            assert [a.status_code for a in answers] == [200, 200], answers[0].text
            ours, local = (a.json()["outputs"][0]["data"] for a in answers)
            assert ours == pytest.approx(local, abs=1e-5)
        # The tokenizer's environment was built for the image's Python, not the host's.
        assert "sentence_tokenizer/env.tar.gz (Python 3.10)" in server.output
    finally:
        server.stop()


def test_tini_forwards_sigterm_and_serve_exits_zero(
    image: str, start_container: StartContainer
) -> None:
    server = start_container(image).wait_ready()
    server.terminate()
    assert server.wait_exit(30) == 0
    assert "serve.runtime.server" in server.output


def test_any_other_command_runs_instead_of_serve(image: str) -> None:
    result = run_in_image(image, "python3", "-c", "import sys; print('hello', sys.argv[1:])", "x")
    assert result.returncode == 0, result.stderr
    assert BANNER in result.stdout
    assert result.stdout.rstrip().endswith("hello ['x']")
    assert run_in_image(image, "bash", "-c", "exit 7").returncode == 7


def test_labels_tell_sagemaker_what_the_image_can_do(image: str) -> None:
    labels = inspect(image)["Config"]["Labels"]
    assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert labels["com.amazonaws.sagemaker.capabilities.multi-models"] == "true"
    assert labels["com.amazonaws.sagemaker.capabilities.bidirectional-streaming"] == "true"
    assert re.fullmatch(r".+:\d\d\.\d\d-py3", labels["org.opencontainers.image.base.name"])


def test_serve_leaves_the_base_images_python_packages_as_they_were(image: str) -> None:
    """serve's dependencies live in their own venv; the base's Python gets the model libraries
    of the lock for its version (when the image has them) and nothing else."""
    base = inspect(image)["Config"]["Labels"]["org.opencontainers.image.base.name"]
    pip_list = ("python3", "-m", "pip", "list", "--format=freeze")
    in_base, in_image = (bypass_entrypoint(name, *pip_list) for name in (base, image))
    assert in_base.returncode == in_image.returncode == 0, in_base.stderr + in_image.stderr
    version = bypass_entrypoint(
        image, "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"
    )
    models = pinned_requirements(LOCKS / f"models-py{version.stdout.strip()}.txt")
    changed = set(in_image.stdout.split()) - set(in_base.stdout.split())
    for package in changed:
        name, _, pinned_version = package.partition("==")
        assert name.lower().replace("_", "-") in models, f"{package} is not a model library"
        assert str(models[name.lower().replace("_", "-")].specifier) == f"=={pinned_version}"
    serving = bypass_entrypoint(image, "/opt/serve/bin/python", "-c", "import flask, numpy")
    assert serving.returncode == 0, serving.stderr
    assert bypass_entrypoint(image, "python3", "-c", "import flask").returncode != 0


def test_the_image_adds_no_package_caches(image: str) -> None:
    base = inspect(image)["Config"]["Labels"]["org.opencontainers.image.base.name"]
    caches = ("/var/cache/apt/archives", "/var/lib/apt/lists", "/root/.cache")
    found = [
        set(bypass_entrypoint(name, "find", *caches, "-type", "f").stdout.split())
        for name in (base, image)
    ]
    added = found[1] - found[0]
    assert {path for path in added if not path.endswith("/lock")} == set()


def dockerfile_steps() -> int:
    """How many build steps the project's Dockerfile has: its instructions from FROM on."""
    lines = (REPO_ROOT / "Dockerfile").read_text().splitlines()
    instructions = [line for line in lines if re.match(r"^[A-Z]+\s", line)]
    return len(instructions) - next(
        i for i, line in enumerate(instructions) if line.startswith("FROM ")
    )


def test_the_build_log_holds_no_pip_warnings(image: str) -> None:
    """`make test-images` keeps each build's log; pip's root and conflict warnings would show.

    The log is the project's build alone: the stand-in base's own build (whose
    NVIDIA-mimicking pip upgrade warns as NVIDIA's does) has a log of its own.
    """
    log = BUILD_LOGS / (image.replace(":", "-").replace("/", "_") + ".log")
    assert log.is_file(), f"{log} is missing: build the image with `make test-images`"
    text = log.read_text()
    steps = re.findall(r"^STEP \d+/(\d+): ", text, re.M)
    assert steps, f"{log} records no build steps"
    assert set(steps) == {str(dockerfile_steps())}, f"{log} holds another build's steps"
    assert "COMMIT" in text
    assert "Running pip as the 'root' user" not in text
    assert "Cannot uninstall" not in text
    assert "externally-managed-environment" not in text
