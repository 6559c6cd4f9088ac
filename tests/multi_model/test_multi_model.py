"""Multi-model endpoints: SageMaker's /models contract against real Triton."""

from __future__ import annotations

import concurrent.futures
import json
import random
import shutil
import struct
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import (
    FORGED_INTERNAL_HEADERS,
    ServeProcess,
    add_request,
    binary_add_request,
    write_add_model,
)

StartServe = Callable[..., ServeProcess]
ADD = add_request([1, 2, 3, 4], [10, 20, 30, 40])


@pytest.fixture
def mme(opt_ml: Path, start_serve: StartServe) -> Iterator[ServeProcess]:
    yield start_serve(opt_ml, SAGEMAKER_MULTI_MODEL="true").wait_ready()


def upload_add(opt_ml: Path, key: str, name: str = "add", **kw: object) -> str:
    """SageMaker's layout: /opt/ml/models/<key>/model holding one model's files."""
    url = opt_ml / "models" / key / "model"
    folder = write_add_model(opt_ml / "staging" / key, name=name, **kw)
    shutil.copytree(folder, url)
    return str(url)


# An add model whose initialize() obeys files beside its version folder: it sleeps as
# long as SLOW says, and fails while BROKEN says "yes".
MARKED = """
import os
import time
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        marker = os.path.join(args["model_repository"], "SLOW")
        if os.path.exists(marker):
            time.sleep(float(open(marker).read()))
        marker = os.path.join(args["model_repository"], "BROKEN")
        if os.path.exists(marker) and open(marker).read() == "yes":
            raise RuntimeError("broken on purpose")

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("C", (
                pb_utils.get_input_tensor_by_name(r, "A").as_numpy()
                + pb_utils.get_input_tensor_by_name(r, "B").as_numpy()))])
            for r in requests
        ]
"""


# What serve logs when Triton crashed and starts again, and once its models are back
# (serve/runtime/recovery.py).
RESTARTED = "starting it again"
BACK = "Triton is back"


def recovered(server: ServeProcess, restarts: int = 1) -> bool:
    """Triton was started again at least `restarts` times, and every restart serve logged
    has finished loading the models again."""
    output = server.output
    return output.count(BACK) == output.count(RESTARTED) >= restarts


def load(server: ServeProcess, name: str, url: str, **headers: str) -> requests.Response:
    return requests.post(
        f"{server.url}/models", json={"model_name": name, "url": url}, headers=headers, timeout=120
    )


def invoke(server: ServeProcess, name: str, body: dict = ADD) -> requests.Response:
    return requests.post(f"{server.url}/models/{name}/invoke", json=body, timeout=30)


@pytest.mark.container
def test_load_list_describe_invoke_unload(opt_ml: Path, mme: ServeProcess) -> None:
    url = mme.sagemaker_path(Path(upload_add(opt_ml, "5f2a")))
    response = load(mme, "5f2a", url, **{"X-Amzn-SageMaker-Target-Model": "add.tar.gz"})
    assert response.status_code == 200, response.text
    assert "target model add.tar.gz" in mme.output
    assert requests.get(f"{mme.url}/models", timeout=5).json() == {
        "models": [{"modelName": "5f2a", "modelUrl": url}]
    }
    assert requests.get(f"{mme.url}/models/5f2a", timeout=5).json()["modelUrl"] == url
    result = invoke(mme, "5f2a")
    assert result.status_code == 200
    assert result.json()["outputs"][0]["data"] == [11, 22, 33, 44]
    assert requests.delete(f"{mme.url}/models/5f2a", timeout=60).status_code == 200
    assert invoke(mme, "5f2a").status_code == 404
    assert requests.get(f"{mme.url}/models", timeout=5).json() == {"models": []}
    workspace = mme.workspace()
    assert not list((workspace / "repository").iterdir())


def test_contract_status_codes(opt_ml: Path, mme: ServeProcess) -> None:
    url = upload_add(opt_ml, "a1")
    assert load(mme, "a1", url).status_code == 200
    conflict = load(mme, "a1", url)
    assert conflict.status_code == 409 and "already loaded" in conflict.json()["error"]
    for method, path in (("GET", "/models/zz"), ("DELETE", "/models/zz")):
        response = requests.request(method, f"{mme.url}{path}", timeout=10)
        assert response.status_code == 404 and "not loaded" in response.json()["error"]
    assert invoke(mme, "zz").status_code == 404
    assert invoke(mme, "a1~add").status_code == 404  # steps are never public
    wrong_method = requests.put(f"{mme.url}/models/a1", timeout=5)
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]
    outside = load(mme, "x", str(opt_ml / "model"))
    assert outside.status_code == 400 and "outside" in outside.json()["error"]
    missing = load(mme, "y", str(opt_ml / "models" / "nothing" / "model"))
    assert missing.status_code == 400
    bad = requests.post(f"{mme.url}/models", data=b"{nope", timeout=5)
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    # Liveness, not readiness: ping stays 200 whatever is loaded.
    assert mme.ping_status() == 200
    # /invocations belongs to single-model endpoints.
    assert requests.post(f"{mme.url}/invocations", json=ADD, timeout=5).status_code == 404


def test_names_nginx_cannot_route_still_work(opt_ml: Path, mme: ServeProcess) -> None:
    name = "team a/b.tar.gz".replace("/", "+")
    assert load(mme, name, upload_add(opt_ml, "odd")).status_code == 200
    response = requests.post(f"{mme.url}/models/team%20a+b.tar.gz/invoke", json=ADD, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [11, 22, 33, 44]
    assert requests.delete(f"{mme.url}/models/team%20a+b.tar.gz", timeout=60).status_code == 200


def test_invoke_errors_name_the_problem(opt_ml: Path, mme: ServeProcess) -> None:
    assert load(mme, "b2", upload_add(opt_ml, "b2")).status_code == 200
    bad = requests.post(f"{mme.url}/models/b2/invoke", data=b"{broken", timeout=10)
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    wrong = invoke(
        mme, "b2", {"inputs": [{"name": "Q", "shape": [1], "datatype": "FP32", "data": [1]}]}
    )
    assert wrong.status_code == 400 and wrong.json()["error"]


def test_pagination(opt_ml: Path, mme: ServeProcess) -> None:
    names = [f"m{i:02d}" for i in range(3)]
    for name in names:
        assert load(mme, name, upload_add(opt_ml, name)).status_code == 200
    seen, token, pages = [], None, 0
    while True:
        params = {"next_page_token": token} if token else {}
        page = requests.get(f"{mme.url}/models", params={**params, "page_size": 2}, timeout=5)
        body = page.json()
        seen += [m["modelName"] for m in body["models"]]
        pages += 1
        token = body.get("nextPageToken")
        if not token:
            break
    assert seen == names and pages == 2
    garbage = requests.get(f"{mme.url}/models", params={"next_page_token": "%%%"}, timeout=5)
    assert garbage.status_code == 400


def test_layouts_direct_ensemble_and_archive(opt_ml: Path, mme: ServeProcess) -> None:
    # A folder of several models: an ensemble and its step.
    url = opt_ml / "models" / "ens" / "model"
    write_add_model(url, name="step")
    (url / "pipeline" / "1").mkdir(parents=True)
    (url / "pipeline" / "config.pbtxt").write_text(
        textwrap.dedent("""
        name: "pipeline"
        platform: "ensemble"
        max_batch_size: 8
        input [ { name: "X", data_type: TYPE_FP32, dims: [ 4 ] } ]
        output [ { name: "Y", data_type: TYPE_FP32, dims: [ 4 ] } ]
        ensemble_scheduling { step [ { model_name: "step", model_version: -1,
          input_map { key: "A" value: "X" } input_map { key: "B" value: "X" }
          output_map { key: "C" value: "Y" } } ] }
    """)
    )
    response = load(mme, "ens", str(url))
    assert response.status_code == 200, response.text
    body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    assert invoke(mme, "ens", body).json()["outputs"][0]["data"] == [2, 4, 6, 8]
    # A second upload with a step of the same name does not collide.
    shutil.copytree(url, opt_ml / "models" / "ens2" / "model")
    assert load(mme, "ens2", str(opt_ml / "models" / "ens2" / "model")).status_code == 200
    assert invoke(mme, "ens2", body).status_code == 200

    # A folder holding model.tar.gz, with the model folder inside.
    archived = opt_ml / "models" / "tgz" / "model"
    archived.mkdir(parents=True)
    source = write_add_model(opt_ml / "pack", name="packed")
    subprocess.run(
        ["tar", "-czf", str(archived / "model.tar.gz"), "-C", str(source.parent), "packed"],
        check=True,
    )
    response = load(mme, "tgz", str(archived))
    assert response.status_code == 200, response.text
    assert invoke(mme, "tgz").json()["outputs"][0]["data"] == [11, 22, 33, 44]
    assert requests.delete(f"{mme.url}/models/tgz", timeout=60).status_code == 200
    assert not (mme.workspace() / "uploads" / "tgz").exists()

    # A hostile archive is refused and nothing of it stays.
    hostile = opt_ml / "models" / "evil" / "model"
    hostile.mkdir(parents=True)
    subprocess.run(
        [
            "tar",
            "-czf",
            str(hostile / "model.tar.gz"),
            "-P",
            "--transform",
            "s,^,../../,",
            "-C",
            str(source.parent),
            "packed",
        ],
        check=True,
    )
    refused = load(mme, "evil", str(hostile))
    assert refused.status_code == 400 and "model.tar.gz" in refused.json()["error"]
    assert invoke(mme, "ens").status_code != 404  # others keep serving


FAILING_LOAD = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        {body}
"""


def test_load_out_of_memory_is_507_and_others_keep_serving(opt_ml: Path, mme: ServeProcess) -> None:
    assert load(mme, "ok", upload_add(opt_ml, "ok")).status_code == 200
    oom = upload_add(
        opt_ml, "oom", model_py=FAILING_LOAD.format(body="raise MemoryError('CUDA out of memory')")
    )
    response = load(mme, "oom", oom)
    assert response.status_code == 507, response.text
    broken = upload_add(
        opt_ml, "broken", model_py=FAILING_LOAD.format(body="raise ValueError('bad weights')")
    )
    response = load(mme, "broken", broken)
    assert response.status_code == 400 and "bad weights" in response.json()["error"]
    assert invoke(mme, "ok").status_code == 200
    assert [
        m["modelName"] for m in requests.get(f"{mme.url}/models", timeout=5).json()["models"]
    ] == ["ok"]


CGROUP = Path("/sys/fs/cgroup/memory")
STUB_EATS_MEMORY = """
import os
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        # Join a 64 MiB memory cgroup, then allocate past it: the kernel's OOM
        # killer takes this stub, exactly as on a full instance.
        with open("{cgroup}/cgroup.procs", "w") as procs:
            procs.write(str(os.getpid()))
        self.hog = bytearray(512 * 1024 * 1024)
"""


def test_stub_killed_for_memory_during_load_is_507(opt_ml: Path, mme: ServeProcess) -> None:
    cgroup = CGROUP / f"serve-test-{random.randrange(1 << 30)}"
    cgroup.mkdir()
    try:
        (cgroup / "memory.limit_in_bytes").write_text(str(64 * 1024 * 1024))
        url = upload_add(opt_ml, "hog", model_py=STUB_EATS_MEMORY.format(cgroup=cgroup))
        response = load(mme, "hog", url)
        assert response.status_code == 507, response.text
    finally:
        cgroup.rmdir()


# In two of three full-suite runs on the 2-core machine (never alone) the public port
# refused connections part-way through; the cause is not found yet, so a failure now
# carries serve's output and the test is tried up to three times.
def test_storm_of_loads_unloads_and_invocations(opt_ml: Path, mme: ServeProcess) -> None:
    keys = [f"s{i}" for i in range(4)]
    urls = {key: upload_add(opt_ml, key) for key in keys}
    rng = random.Random(7)
    allowed = {200, 404, 409}

    def operation(step: int) -> tuple[str, int]:
        key = rng.choice(keys)
        kind = rng.choices(["load", "unload", "invoke"], [2, 1, 7])[0]
        if kind == "load":
            response = load(mme, key, urls[key])
        elif kind == "unload":
            response = requests.delete(f"{mme.url}/models/{key}", timeout=120)
        else:
            response = invoke(mme, key)
        if response.status_code not in allowed:
            unexpected.append((kind, key, response.status_code, response.text))
        return kind, response.status_code

    unexpected: list[tuple[str, str, int, str]] = []
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        try:
            results = list(pool.map(operation, range(1000)))
        except requests.ConnectionError as exc:
            raise AssertionError(f"{exc}; serve's output:\n{mme.output[-8000:]}") from exc
    if RESTARTED in mme.output:
        # Triton 2.51 itself was seen to crash in this storm (SIGSEGV, 1 full run in 12):
        # serve starts it again (test_recovery.py). What reached it in the gap was refused
        # as unavailable; once its models are back, everything below must agree again.
        mme.wait_until(lambda: recovered(mme), 90, "Triton to be back")
        unexpected = [u for u in unexpected if u[2] not in (502, 503)]
    assert not unexpected, f"{unexpected}; serve's output:\n{mme.output[-8000:]}"
    assert sum(1 for kind, status in results if kind == "invoke" and status == 200) > 50
    listed = {m["modelName"] for m in requests.get(f"{mme.url}/models", timeout=5).json()["models"]}
    for key in keys:
        ok = invoke(mme, key).status_code
        assert (ok == 200) == (key in listed)
    for key in listed:
        assert requests.delete(f"{mme.url}/models/{key}", timeout=60).status_code == 200
    workspace = mme.workspace()
    assert not list((workspace / "repository").iterdir())
    assert not (workspace / "uploads").exists() or not list((workspace / "uploads").iterdir())


def test_a_clients_copy_of_the_fronts_own_headers_changes_nothing(
    opt_ml: Path, mme: ServeProcess
) -> None:
    assert load(mme, "h1", upload_add(opt_ml, "h1")).status_code == 200
    assert load(mme, "h 2", upload_add(opt_ml, "h2")).status_code == 200
    # Straight to Triton, through the payload service (a name nginx does not route,
    # another Accept), and the control app's routes.
    for path, accept in (
        ("/models/h1/invoke", "application/json"),
        ("/models/h%202/invoke", "application/json"),
        ("/models/h1/invoke", "text/csv"),
    ):
        response = requests.post(
            f"{mme.url}{path}",
            json=ADD,
            headers={**FORGED_INTERNAL_HEADERS, "Accept": accept},
            timeout=30,
        )
        assert response.status_code == 200, (path, accept, response.text)
        assert "11" in response.text
    listed = requests.get(f"{mme.url}/models", headers=FORGED_INTERNAL_HEADERS, timeout=5)
    assert listed.status_code == 200
    assert {m["modelName"] for m in listed.json()["models"]} == {"h1", "h 2"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_name", "a\u0000b"),
        ("model_name", "a\ud800b"),
        ("model_name", "line\nbreak"),
        ("url", "NUL\u0000"),
        ("url", "\udcff"),
    ],
)
def test_bad_bytes_in_a_load_are_400(
    opt_ml: Path, mme: ServeProcess, field: str, value: str
) -> None:
    url = upload_add(opt_ml, "bytes")
    body = {"model_name": "bytes", "url": url}
    body[field] = url + value if field == "url" else value
    # json.dumps writes \\u0000 and lone surrogates as escapes, as any client may.
    response = requests.post(f"{mme.url}/models", data=json.dumps(body), timeout=30)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]
    assert requests.get(f"{mme.url}/models", timeout=5).json() == {"models": []}
    assert load(mme, "bytes", url).status_code == 200


def test_a_link_out_of_the_models_root_is_refused_like_in_an_archive(
    opt_ml: Path, mme: ServeProcess, tmp_path: Path
) -> None:
    outside = write_add_model(tmp_path / "elsewhere", name="add")
    url = Path(upload_add(opt_ml, "lnk"))
    model_py = url / "1" / "model.py"
    for link, target in ((model_py, outside / "1" / "model.py"), (url / "1", outside / "1")):
        shutil.rmtree(url / "1")
        shutil.copytree(outside / "1", url / "1")
        if link.is_dir():
            shutil.rmtree(link)
        else:
            link.unlink()
        link.symlink_to(target)
        refused = load(mme, "lnk", str(url))
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert str(link.relative_to(url)) in error and "outside" in error, error
        assert requests.get(f"{mme.url}/models", timeout=5).json() == {"models": []}
    # A link that stays under the models root is an ordinary file.
    (url / "1").unlink()
    shared = opt_ml / "models" / "shared"
    shutil.copytree(outside / "1", shared)
    (url / "1").symlink_to(shared)
    assert load(mme, "lnk", str(url)).status_code == 200


def test_a_dangling_link_is_refused_not_waited_on(opt_ml: Path, mme: ServeProcess) -> None:
    # A model folder packed on its own with `tar` keeps a link to a sibling's file as a
    # link to nothing (the NCF examples share model.py so): Triton then never finished
    # the load, and the load waited SERVE_MODEL_LOAD_TIMEOUT.
    url = Path(upload_add(opt_ml, "dangling"))
    model_py = url / "1" / "model.py"
    model_py.unlink()
    model_py.symlink_to("../../add/1/model.py")
    started = time.monotonic()
    refused = load(mme, "dangling", str(url))
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert "1/model.py" in error and "does not exist" in error and "dereference" in error
    assert time.monotonic() - started < 10
    assert requests.get(f"{mme.url}/models", timeout=5).json() == {"models": []}


def test_answers_name_the_model_as_the_caller_loaded_it(opt_ml: Path, mme: ServeProcess) -> None:
    name = "team a+b.tar.gz"  # no name nginx routes: Triton knows it by a hash
    assert load(mme, name, upload_add(opt_ml, "named")).status_code == 200
    path = f"{mme.url}/models/team%20a+b.tar.gz/invoke"
    answer = requests.post(path, json=ADD, timeout=30)
    assert answer.status_code == 200 and answer.json()["model_name"] == name, answer.text
    body, content_type = binary_add_request(binary_outputs=True)
    binary = requests.post(path, data=body, headers={"Content-Type": content_type}, timeout=30)
    assert binary.status_code == 200, binary.text
    size = int(binary.headers["Content-Type"].rsplit("=", 1)[1])
    assert json.loads(binary.content[:size])["model_name"] == name
    assert struct.unpack("<4f", binary.content[size:]) == (11, 22, 33, 44)
    wrong = requests.post(
        path,
        json={"inputs": [{"name": "Q", "shape": [1], "datatype": "FP32", "data": [1]}]},
        timeout=30,
    )
    assert wrong.status_code == 400 and name in wrong.json()["error"], wrong.text
    assert "model-" not in wrong.json()["error"]
