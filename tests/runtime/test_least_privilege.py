"""Triton, its stubs and model code run as an unprivileged user when serve is root.

In the image the user is NVIDIA's `triton-server` (uid 1000), which exists
there and nowhere on a test host: locally the same drop is shown with
`SERVE_TRITON_USER=daemon` (not nobody: nginx's workers are nobody:nogroup,
who may connect to serve's internal sockets).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from serve.triton.install import STUB_NAME
from tests.conftest import ServeProcess, add_request, write_add_model

StartServe = Callable[..., ServeProcess]

# What a model's code tries at load time, each outcome printed on one line for the test.
PROBE_MODEL_PY = """
import json
import os
import socket
from pathlib import Path

import triton_python_backend_utils as pb_utils


def attempt(action):
    try:
        action()
        return "done"
    except OSError as exc:
        return type(exc).__name__


def write(path):
    with open(path, "w") as out:
        out.write("planted by model code")


def connect(path):
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))


class TritonPythonModel:
    def initialize(self, args):
        prepared = Path(args["model_repository"])  # <workspace>/repository/<model>
        workspace = prepared.parent.parent
        model_dir = Path(os.environ.get("OPT_ML", "/opt/ml")) / "model"
        outcome = {
            "uid": os.getuid(),
            "groups": os.getgroups(),
            "model_dir": attempt(lambda: write(model_dir / "planted")),
            "model_file": attempt(lambda: write(model_dir / "probe" / "config.pbtxt")),
            "repository": attempt(lambda: write(prepared / "planted")),
            "workspace": attempt(lambda: write(workspace / "planted")),
            "control_socket": attempt(lambda: connect(workspace / "front" / "control.sock")),
            "home": attempt(lambda: write(Path(os.environ["HOME"]) / "cache")),
        }
        print("PROBE " + json.dumps(outcome), flush=True)

    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "A").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "B").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("C", a + b)]))
        return responses
"""


def private_triton(folder: Path) -> Path:
    """A copy of the local Triton (nvidia-pytriton's) whose stubs anyone may run; its binary.

    Triton run as root chmods a stub it could not start to u=x, through serve's
    links into the shared installation, which leaves that stub to root alone
    (other tests run Triton as root). The copy keeps the wheel's layout, so
    the binaries' RPATH still finds the wheel's libraries.
    """
    spec = importlib.util.find_spec("pytriton")
    assert spec is not None and spec.submodule_search_locations
    package = Path(next(iter(spec.submodule_search_locations)))
    copy = folder / "site" / "pytriton" / "tritonserver"
    shutil.copytree(package / "tritonserver", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "site" / "nvidia_pytriton.libs").symlink_to(package.parent / "nvidia_pytriton.libs")
    for stub in copy.rglob(STUB_NAME):
        stub.chmod(0o755)
    return copy / "bin" / "tritonserver"


def python_for_everyone(folder: Path) -> Path:
    """An interpreter any user may run, that imports what the tests' venv holds (numpy).

    The tests' venv may sit on an interpreter only root can reach (pyenv
    under /root); the stub embeds the system's libpython of the same version,
    so a venv of the system's interpreter that also reads the tests'
    site-packages is what the image's Python is to its models.
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")
    assert system is not None, f"no {version} outside the venv"
    venv = folder / "models-venv"
    subprocess.run([system, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = venv / "lib" / version / "site-packages"
    (site / "tests-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin" / "python"


def uid_of(pid: int) -> int:
    """The effective uid of process `pid`, as /proc tells it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])
    raise AssertionError(f"no Uid line for process {pid}")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can run a child as another user")
@pytest.mark.container
def test_triton_stubs_and_model_code_cannot_write_the_model_or_the_workspace(
    start_serve: StartServe, serve_target: str, enterable_tmp: Path
) -> None:
    local = serve_target == "local"
    user = "daemon" if local else "triton-server"
    uid = pwd.getpwnam("daemon").pw_uid if local else 1000
    # Folders the unprivileged user may read, as SageMaker's /opt/ml/model is.
    opt_ml = enterable_tmp / "opt_ml"
    write_add_model(opt_ml / "model", "probe", model_py=PROBE_MODEL_PY)
    env = {}  # the image's default
    if local:
        env = {
            "SERVE_TRITON_USER": user,
            "TRITONSERVER_BIN": str(private_triton(enterable_tmp)),
            "SERVE_MODEL_PYTHON": str(python_for_everyone(enterable_tmp)),
        }
    server = start_serve(opt_ml, writable_model=True, **env).wait_ready()

    response = requests.post(
        f"{server.url}/invocations", json=add_request([1, 2, 3, 4], [1, 1, 1, 1]), timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [2, 3, 4, 5]

    (line,) = [line for line in server.output.splitlines() if line.startswith("PROBE ")]
    probe = json.loads(line.removeprefix("PROBE "))
    assert probe["uid"] == uid
    assert 0 not in probe["groups"]
    for target in ("model_dir", "model_file", "repository", "workspace", "control_socket"):
        assert probe[target] == "PermissionError", (target, probe)
    assert probe["home"] == "done"  # its own folder
    assert not (opt_ml / "model" / "planted").exists()

    serve = server.process.pid if local else server.child_pids("serve")[0]
    assert uid_of(serve) == 0
    (nginx,) = server.child_pids("nginx", direct=True)
    assert uid_of(nginx) == 0  # nginx's master; its workers are nobody, as before
    (triton,) = server.child_pids("tritonserver")
    stubs = server.child_pids("triton_python_backend_stub")
    assert stubs
    assert {uid_of(pid) for pid in [triton, *stubs]} == {uid}
    assert f"starting tritonserver as {user} (uid {uid})" in server.output


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can run a child as another user")
@pytest.mark.container
def test_a_model_file_only_root_may_read_stops_start_up_naming_it_and_the_fix(
    start_serve: StartServe, serve_target: str, enterable_tmp: Path
) -> None:
    opt_ml = enterable_tmp / "opt_ml"
    write_add_model(opt_ml / "model", "secret")
    (opt_ml / "model" / "secret" / "1" / "model.py").chmod(0o600)
    env = {"SERVE_TRITON_USER": "daemon"} if serve_target == "local" else {}

    server = start_serve(opt_ml, **env)

    assert server.wait_exit(60) == 1
    model_py = server.sagemaker_path(opt_ml / "model" / "secret" / "1" / "model.py")
    assert f"cannot read {model_py} (mode -rw-------)" in server.output
    assert "chmod -R a+rX" in server.output
    assert "SERVE_TRITON_USER=root" in server.output
    assert "Traceback" not in server.output


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can run a child as another user")
def test_a_stub_only_root_may_run_stops_start_up_naming_it(
    start_serve: StartServe, enterable_tmp: Path
) -> None:
    triton = private_triton(enterable_tmp)
    (stub,) = [
        path
        for path in (triton.parent.parent / "python_backend_stubs").rglob(STUB_NAME)
        if path.parent.name == f"{sys.version_info.major}.{sys.version_info.minor}"
    ]
    stub.chmod(0o100)  # what Triton's chmod leaves
    opt_ml = enterable_tmp / "opt_ml"
    write_add_model(opt_ml / "model")

    server = start_serve(opt_ml, SERVE_TRITON_USER="daemon", TRITONSERVER_BIN=str(triton))

    assert server.wait_exit(60) == 1
    assert f"cannot run {stub} (mode ---x------); chmod 755 it" in server.output
    assert "Traceback" not in server.output
