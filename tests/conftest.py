"""Shared fixtures: `/opt/ml`-shaped trees and `serve` running as a real subprocess.

Every server here is the real `serve` entrypoint with a real Triton behind
it, started in its own session on a free port and torn down with killpg.
Tests marked `container` also run against each image named with `--image`,
started as SageMaker starts one (`podman run ... IMAGE serve`, /opt/ml/model
mounted read-only, the host's network, the port in SAGEMAKER_BIND_TO_PORT).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests

from serve.front.nginx import INTERNAL_HEADERS, FrontConfig
from serve.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "model_repository"
# Every header the front uses to talk to its internal services, as a client could forge it.
FORGED_INTERNAL_HEADERS = {header: "3-bogus" for header in INTERNAL_HEADERS}


def own_address() -> str | None:
    """This machine's own non-loopback IPv4 address, or None; tests only ever connect to it.

    Connecting a UDP socket sends nothing: the kernel only picks the source
    address it would route from.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: a route lookup, no traffic
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


# Ports the tests hand out lie below the kernel's ephemeral range (32768 and up, where
# Triton's internal listeners and every client socket get theirs), each pytest-xdist
# worker in a block of its own, so no two workers, and no outgoing connection, can be
# given the same port between a probe and the bind that follows it.
_PORT_BLOCK = 1000
_PORT_BASE = 20000
_next_port = itertools.count()


def _worker_index() -> int:
    """This pytest-xdist worker's number (0 without xdist); blocks wrap below 32768."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    return int(worker) % ((32768 - _PORT_BASE) // _PORT_BLOCK) if worker.isdigit() else 0


def free_port() -> int:
    """A loopback port nothing listens on, from this worker's own block of ports."""
    low = _PORT_BASE + _worker_index() * _PORT_BLOCK
    for _ in range(_PORT_BLOCK):
        port = low + next(_next_port) % _PORT_BLOCK
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{low + _PORT_BLOCK - 1}")


def front_config(
    workdir: Path, environment: Mapping[str, str] | None = None, **fields: Any
) -> FrontConfig:
    """The front's config as serve would make it under `environment`, with no serve
    running: Triton on port 1 (nothing listens), the control socket in `workdir`, the
    `add` model; `fields` replace any of these."""
    values: dict[str, Any] = {
        "settings": Settings.from_environ(dict(environment or {})),
        "workdir": workdir,
        "triton_port": 1,
        "control_socket": workdir / "control.sock",
        "default_model": "add",
    }
    return FrontConfig(**(values | fields))


ADD_MODEL_PY = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        time.sleep(float(__import__("os").environ.get("TEST_LOAD_DELAY", "0")))

    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "A").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "B").as_numpy()
            delay = pb_utils.get_input_tensor_by_name(request, "DELAY")
            if delay is not None:
                time.sleep(float(delay.as_numpy().reshape(-1)[0]))
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("C", a + b)]))
        return responses
"""


def write_add_model(
    repository: Path,
    name: str = "add",
    kind: str = "KIND_CPU",
    count: int = 1,
    model_py: str = ADD_MODEL_PY,
) -> Path:
    """A small Python-backend model: C = A + B (FP32, 4 wide), optional DELAY seconds."""
    folder = repository / name
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.py").write_text(textwrap.dedent(model_py))
    (folder / "config.pbtxt").write_text(
        textwrap.dedent(
            f"""
            name: "{name}"
            backend: "python"
            max_batch_size: 8
            input [
              {{ name: "A", data_type: TYPE_FP32, dims: [ 4 ] }},
              {{ name: "B", data_type: TYPE_FP32, dims: [ 4 ] }},
              {{ name: "DELAY", data_type: TYPE_FP32, dims: [ 1 ], optional: true }}
            ]
            output [ {{ name: "C", data_type: TYPE_FP32, dims: [ 4 ] }} ]
            instance_group [ {{ kind: {kind}, count: {count} }} ]
            """
        )
    )
    return folder


def add_request(a: list[float], b: list[float], delay: float | None = None) -> dict:
    inputs = [
        {"name": "A", "shape": [1, 4], "datatype": "FP32", "data": a},
        {"name": "B", "shape": [1, 4], "datatype": "FP32", "data": b},
    ]
    if delay is not None:
        inputs.append({"name": "DELAY", "shape": [1, 1], "datatype": "FP32", "data": [delay]})
    return {"inputs": inputs}


def binary_add_request(binary_outputs: bool = False) -> tuple[bytes, str]:
    """The add model's request (A + B = [11, 22, 33, 44]) in Triton's binary+json, and its type.

    `binary_outputs` asks for C in binary too.
    """
    header: dict[str, object] = {
        "inputs": [
            {"name": n, "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}
            for n in ("A", "B")
        ]
    }
    if binary_outputs:
        header["outputs"] = [{"name": "C", "parameters": {"binary_data": True}}]
    head = json.dumps(header).encode()
    body = head + struct.pack("<4f", 1, 2, 3, 4) + struct.pack("<4f", 10, 20, 30, 40)
    return body, f"application/vnd.sagemaker-triton.binary+json;json-header-size={len(head)}"


def process_state(stat: Path) -> str:
    """The state letter in /proc/PID/stat or /proc/PID/task/TID/stat ("Z": exited, its
    files closed; "T": stopped), or "" once the process is gone."""
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie does not)."""
    return process_state(Path(f"/proc/{pid}/stat")) not in ("Z", "")


def wait_all_gone(pids: Sequence[int], timeout: float) -> None:
    """Wait up to `timeout` seconds for every one of `pids` to have exited; fail if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.05)
    assert not [pid for pid in pids if alive(pid)]


def triton_argv(server: ServeProcess) -> list[str]:
    """The command line of serve's one Triton."""
    (pid,) = server.child_pids("tritonserver")
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")


def own_tmpfs(mount_point: str, size: int | str) -> list[str]:
    """A wrapper that runs its command in a mount namespace of its own, a tmpfs of `size`
    (bytes, or "64m") mounted at `mount_point` (a shell word: "$VARIABLE" works)."""
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'mount -t tmpfs -o size={size} tmpfs {mount_point} && exec "$@"',
        "own-tmpfs",
    ]


class ServeProcess:
    """A running `serve` and what it printed."""

    def __init__(self, env: Mapping[str, str], port: int, cwd: Path, wrapper: Sequence[str] = ()):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            self._command(wrapper),
            env=dict(env),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _command(self, wrapper: Sequence[str]) -> list[str]:
        return [*wrapper, sys.executable, "-m", "serve", "serve"]

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            with self._lock:
                self._lines.append(raw.decode("utf-8", errors="replace"))

    @property
    def output(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.process.poll() is not None:
                raise AssertionError(
                    f"serve exited ({self.process.returncode}) before {what}:\n{self.excerpt()}"
                )
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n{self.excerpt()}")

    def excerpt(self) -> str:
        """serve's errors and warnings (Triton's E and W lines: why a model failed to load,
        which its shutdown's lines push out of the tail), then the output's tail."""
        lines = self.output.splitlines()
        flagged = [line for line in lines if re.match(r"[EW]\d{4} |.* (ERROR|WARNING) ", line)]
        return "\n".join(["errors and warnings:", *flagged[-40:], "the end:", *lines[-60:]])

    def ping_status(self) -> int | None:
        try:
            return requests.get(f"{self.url}/ping", timeout=2).status_code
        except requests.RequestException:
            return None

    def wait_ready(self, timeout: float = 120) -> ServeProcess:
        """/ping's 200, then serve's own READY ("ready after" in its log): nginx's /ping
        asks Triton itself, so its first 200 can come half a second before serve has seen
        Triton's metrics listen and counted the start's loads."""
        self.wait_until(lambda: self.ping_status() == 200, timeout, "/ping to answer 200")
        self.wait_until(lambda: " ready after " in self.output, timeout, "serve to log READY")
        return self

    def wait_exit(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout=5)
        return code

    def child_pids(self, name: str, direct: bool = False) -> list[int]:
        """Processes named `name` in serve's process tree (`direct`: its own children only)."""
        found = []
        for status in Path("/proc").glob("[0-9]*/status"):
            with contextlib.suppress(OSError):
                fields = dict(
                    line.split(":\t", 1)
                    for line in status.read_text().splitlines()
                    if ":\t" in line
                )
                if fields.get("Name", "").strip() == name[:15] and self._descends(
                    status.parent, direct
                ):
                    found.append(int(status.parent.name))
        return found

    def _descends(self, proc: Path, direct: bool) -> bool:
        with contextlib.suppress(OSError, ValueError):
            while True:
                stat = (proc / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == self.process.pid:
                    return True
                if ppid <= 1 or direct:
                    return False
                proc = Path("/proc") / str(ppid)
        return False

    def workspace(self) -> Path:
        """serve's workspace, read from the repository Triton was started on.

        Not from `tritonserver --help`, which serve runs first to read the release's
        flags (serve/triton/install.py): that one names no repository.
        """
        for pid in self.child_pids("tritonserver", direct=True):
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
                for argument in argv:
                    if argument.startswith("--model-repository="):
                        return self.inside(str(Path(argument.split("=", 1)[1]).parent))
        raise AssertionError(f"serve runs no Triton on a model repository:\n{self.excerpt()}")

    def has_workspace(self) -> bool:
        """Whether serve's Triton has started on its repository (workspace() can say where)."""
        try:
            self.workspace()
        except AssertionError:
            return False
        return True

    def terminate(self) -> None:
        """What SageMaker does to stop a container: SIGTERM to serve."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)

    def sagemaker_path(self, path: Path) -> str:
        """How serve names `path`, a file in the /opt/ml tree the test made."""
        return str(path)

    def inside(self, path: str) -> Path:
        """A path that serve printed or passed to a child, as this test can open it."""
        return Path(path)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(35)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # Children are in their own sessions; none may outlive serve.
        self._reader.join(timeout=5)


CONTAINER_ENGINE = os.environ.get("CONTAINER_ENGINE", "podman")
# The podman settings this kind of host needs (the Makefile exports the same), so that
# pytest run by hand starts the images as `make test` does.
os.environ.setdefault("CONTAINERS_CONF", str(REPO_ROOT / "build" / "podman" / "containers.conf"))
# What the image gets of the test's environment: serve's settings and the test models' knobs.
CONTAINER_VARIABLES = ("SAGEMAKER_", "SERVE_", "TEST_")


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


class ContainerServe(ServeProcess):
    """`serve` in a built image, run the way SageMaker runs it.

    /opt/ml/model (read-only) and /opt/ml/models come from the test's /opt/ml
    tree; the test's own temporary folder is mounted at the same path, so
    settings that name a file there (SERVE_ENV_CACHE, ...) work unchanged.
    Processes are found through the container's cgroup and files through
    /proc/PID/root, so the same assertions hold as for a local serve.
    """

    def __init__(
        self,
        image: str,
        env: Mapping[str, str],
        port: int,
        opt_ml: Path,
        scratch: Path,
        command: Sequence[str] = ("serve",),
        writable_model: bool = False,
    ):
        """`writable_model`: /opt/ml/model mounted read-write, for tests that show who else
        than the file system's mount keeps model code from writing it."""
        self.image = image
        self.opt_ml = opt_ml
        self.name = f"serve-test-{uuid.uuid4().hex[:12]}"
        cidfile = scratch / f"{self.name}.cid"
        model_mode = "rw" if writable_model else "ro"
        mounts = ["--volume", f"{opt_ml / 'model'}:/opt/ml/model:{model_mode}"]
        if (opt_ml / "models").is_dir():
            mounts += ["--volume", f"{opt_ml / 'models'}:/opt/ml/models:ro"]
        mounts += ["--volume", f"{scratch}:{scratch}"]
        # Inside, only the folder's own mode guards it: Triton runs as triton-server
        # there and must enter what settings name in it (SERVE_ENV_CACHE, ...).
        scratch.chmod(0o755)
        variables = [
            f"--env={key}={value}"
            for key, value in env.items()
            if key.startswith(CONTAINER_VARIABLES)
        ]
        run = [
            CONTAINER_ENGINE, "run", "--rm", "--name", self.name, "--cidfile", str(cidfile),
            "--network", "host", *mounts, *variables, image, *command,
        ]  # fmt: skip
        # The engine's client is the process the test watches (its output, its exit code).
        super().__init__({**os.environ}, port, scratch, wrapper=run)
        deadline = time.monotonic() + 60
        while not cidfile.is_file() or not cidfile.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{image} did not start:\n{self.output[-6000:]}")
            time.sleep(0.05)
        self.container_id = cidfile.read_text().strip()

    def _command(self, wrapper: Sequence[str]) -> list[str]:
        return list(wrapper)  # the whole `podman run` line

    def terminate(self) -> None:
        """`podman stop`: SIGTERM to the container's PID 1, SIGKILL 30 s later."""
        subprocess.Popen(
            [CONTAINER_ENGINE, "stop", "--time", "30", self.name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        super().stop()
        # Killing the client leaves a container running: none may outlive its test.
        subprocess.run(
            [CONTAINER_ENGINE, "rm", "--force", "--ignore", self.name],
            capture_output=True,
            check=False,
            timeout=60,
        )

    def sagemaker_path(self, path: Path) -> str:
        return str(Path("/opt/ml") / path.relative_to(self.opt_ml))

    def inside(self, path: str) -> Path:
        (init,) = self.child_pids("tini") or self.child_pids("serve")
        return Path(f"/proc/{init}/root") / path.lstrip("/")

    def child_pids(self, name: str, direct: bool = False) -> list[int]:
        """Processes named `name` in the container's cgroup (orphans included).

        `direct`: only those whose parent has another name (serve's own children:
        nginx's master, not its workers).
        """
        found = []
        for status in Path("/proc").glob("[0-9]*/status"):
            with contextlib.suppress(OSError):
                if self.container_id not in (status.parent / "cgroup").read_text():
                    continue
                fields = dict(
                    line.split(":\t", 1)
                    for line in status.read_text().splitlines()
                    if ":\t" in line
                )
                if fields.get("Name", "").strip() != name[:15]:
                    continue
                parent = Path("/proc") / fields.get("PPid", "0").strip() / "comm"
                if direct and parent.read_text().strip() == name[:15]:
                    continue
                found.append(int(status.parent.name))
        return found


@pytest.fixture
def enterable_tmp() -> Iterator[Path]:
    """A folder for SERVE_WORKDIR: pytest's tmp_path is closed to nginx's workers under root."""
    folder = Path(tempfile.mkdtemp(prefix="serve-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def opt_ml(tmp_path: Path) -> Path:
    """An empty /opt/ml-shaped tree."""
    root = tmp_path / "opt_ml"
    (root / "model").mkdir(parents=True)
    (root / "models").mkdir()
    return root


def serve_env(opt_ml: Path, port: int, **overrides: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SAGEMAKER_", "SERVE_", "OPT_ML"))
    }
    env.update(
        OPT_ML=str(opt_ml),
        SAGEMAKER_BIND_TO_PORT=str(port),
        SAGEMAKER_TRITON_LOG_VERBOSE="0",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--image",
        action="append",
        default=[],
        metavar="IMAGE",
        help="also run the tests marked 'container' against this built image (repeatable)",
    )
    parser.addoption(
        "--targets",
        choices=("all", "local", "images"),
        default="all",
        help="run every test (all), only those that need no image (local: they can run "
        "while the images build), or only those that run an image (images)",
    )
    parser.addoption(
        "--examples-image",
        action="append",
        default=[],
        metavar="IMAGE",
        help="an image with the model libraries, to serve model_repository/ in (repeatable)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "container: also runs against each --image, started as SageMaker starts it"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    images = metafunc.config.getoption("image")
    if "serve_target" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "container"
    ):
        metafunc.parametrize("serve_target", ["local", *images])
    if "image" in metafunc.fixturenames:
        metafunc.parametrize("image", images)
    if "examples_image" in metafunc.fixturenames:
        metafunc.parametrize("examples_image", metafunc.config.getoption("examples_image"))


def runs_an_image(item: pytest.Item) -> bool:
    """Whether a collected test starts one of the images named on the command line."""
    params = getattr(item, "callspec", None)
    if params is None:
        return False
    return (
        params.params.get("serve_target", "local") != "local"
        or "image" in params.params
        or "examples_image" in params.params
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    targets = config.getoption("targets")
    if targets == "all":
        return
    wanted = targets == "images"
    keep, drop = [], []
    for item in items:
        (keep if runs_an_image(item) == wanted else drop).append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep


@pytest.fixture
def serve_target() -> str:
    """Where start_serve runs serve: "local", or an image for tests marked `container`."""
    return "local"


@pytest.fixture
def start_serve(tmp_path: Path, serve_target: str) -> Iterator[Callable[..., ServeProcess]]:
    """Start `serve` on an /opt/ml tree with extra environment variables."""
    started: list[ServeProcess] = []

    def start(
        opt_ml: Path, wrapper: Sequence[str] = (), writable_model: bool = False, **env: str
    ) -> ServeProcess:
        port = int(env.pop("SAGEMAKER_BIND_TO_PORT", 0)) or free_port()
        environment = serve_env(opt_ml, port, **env)
        server: ServeProcess
        if serve_target == "local":
            server = ServeProcess(environment, port, tmp_path, wrapper)
        else:
            server = ContainerServe(
                serve_target,
                environment,
                port,
                opt_ml,
                tmp_path,
                writable_model=writable_model,
            )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def examples_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One `serve` on the bundled NCF examples, shared by read-only tests."""
    root = tmp_path_factory.mktemp("examples")
    opt_ml = root / "opt_ml"
    opt_ml.mkdir()
    (opt_ml / "model").symlink_to(EXAMPLES)
    port = free_port()
    env = serve_env(opt_ml, port, SAGEMAKER_TRITON_DEFAULT_MODEL_NAME="ncf_food")
    server = ServeProcess(env, port, root)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@contextlib.contextmanager
def pings(server: ServeProcess) -> Iterator[list[tuple[int, str] | str]]:
    """/ping polled back to back by four threads on kept-alive connections while the block
    runs: each answer's (status, body), or the error's repr."""
    answers: list[tuple[int, str] | str] = []
    done = threading.Event()

    def poll() -> None:
        with requests.Session() as session:
            while not done.is_set():
                try:
                    response = session.get(f"{server.url}/ping", timeout=2)
                    answers.append((response.status_code, response.text))
                except requests.RequestException as exc:
                    answers.append(repr(exc))
                    time.sleep(0.01)

    pollers = [threading.Thread(target=poll) for _ in range(4)]
    for poller in pollers:
        poller.start()
    try:
        yield answers
    finally:
        done.set()
        for poller in pollers:
            poller.join()
