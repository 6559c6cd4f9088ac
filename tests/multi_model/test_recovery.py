"""A multi-model endpoint outlives Triton's crash (serve/runtime/recovery.py).

Triton 2.51 was seen killed by SIGSEGV under concurrent loads and unloads (the
storm test, 1 full run in 12); here the same signal is sent on purpose.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

import requests

from serve.runtime.processes import shared_memory_files
from tests.conftest import ServeProcess, pings
from tests.multi_model.test_multi_model import MARKED, invoke, load, recovered, upload_add

StartServe = Callable[..., ServeProcess]


def test_a_crashed_triton_starts_again_with_the_models_it_held(
    opt_ml: Path, start_serve: StartServe
) -> None:
    server = start_serve(
        opt_ml, SAGEMAKER_MULTI_MODEL="true", SERVE_TRITON_RESTARTS="1"
    ).wait_ready()
    urls = {key: upload_add(opt_ml, key) for key in ("r1", "r2")}
    urls["broken"] = upload_add(opt_ml, "broken", model_py=MARKED)
    marker = Path(urls["broken"]) / "BROKEN"
    marker.write_text("no")
    for key, url in urls.items():
        assert load(server, key, url).status_code == 200
    # Its files changed after its load: Triton refuses it when it loads again.
    marker.write_text("yes")
    (triton,) = server.child_pids("tritonserver", direct=True)
    stubs = server.child_pids("triton_python_backend_stub")
    regions = shared_memory_files(stubs)
    assert len(stubs) == 3 and regions

    with pings(server) as answers:
        os.kill(triton, signal.SIGSEGV)
        server.wait_until(lambda: recovered(server), 90, "Triton to be back")
    # /ping never stopped answering 200, and said why while Triton started again.
    assert answers and all(isinstance(a, tuple) and a[0] == 200 for a in answers), [
        a for a in answers if not (isinstance(a, tuple) and a[0] == 200)
    ][:5]
    assert any('"recovering"' in a[1] for a in answers if isinstance(a, tuple))
    assert "tritonserver exited (killed by signal 11)" in server.output
    assert re.search(r"loading again the 3 model\(s\) it held: broken, r1, r2", server.output)

    # The models it held answer again; the one it refused this time is unloaded.
    for key in ("r1", "r2"):
        response = invoke(server, key)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"] == [11, 22, 33, 44]
    assert invoke(server, "broken").status_code == 404
    listed = requests.get(f"{server.url}/models", timeout=5).json()["models"]
    assert [m["modelName"] for m in listed] == ["r1", "r2"]
    assert "model 'broken' did not load again after Triton's restart" in server.output
    assert not list((server.workspace() / "repository").glob("broken*"))
    # The crashed Triton's stubs and their shared memory are gone.
    assert not [pid for pid in stubs if Path(f"/proc/{pid}").exists()]
    assert not [path for path in regions if path.exists()]
    assert server.child_pids("tritonserver", direct=True) != [triton]

    # Loads and unloads work as before: the refused model, mended, loads cleanly.
    marker.write_text("no")
    assert load(server, "broken", urls["broken"]).status_code == 200
    assert invoke(server, "broken").status_code == 200
    assert requests.delete(f"{server.url}/models/r2", timeout=60).status_code == 200

    # One crash more than SERVE_TRITON_RESTARTS allows stops serve, as a crash loop must.
    (triton,) = server.child_pids("tritonserver", direct=True)
    os.kill(triton, signal.SIGSEGV)
    assert server.wait_exit(30) != 0
    assert "more than SERVE_TRITON_RESTARTS=1 allows; stopping" in server.output
