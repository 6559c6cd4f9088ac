"""JSON nested past what serve reads is the caller's 400, wherever JSON is read.

Python's json recurses once per level: 100,000 levels raised RecursionError, a
500 with "internal error" (and a traceback in the log), in the payload
service and in the control app.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import requests

from tests.conftest import ServeProcess, write_add_model

StartServe = Callable[..., ServeProcess]
DEPTH = 100_000
ADD_INPUTS = (
    '[{"name":"A","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]},'
    '{"name":"B","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]'
)
DEEP_ARRAY = "[" * DEPTH + "]" * DEPTH
BODIES = {
    "a bare array": DEEP_ARRAY,
    "an object": '{"a":' * DEPTH + "1" + "}" * DEPTH,
    "simple inputs": '{"inputs":' + DEEP_ARRAY + "}",
    "v2 parameters": '{"inputs":' + ADD_INPUTS + ',"parameters":{"x":' + DEEP_ARRAY + "}}",
}


def test_deep_json_is_400_on_every_route(
    opt_ml: Path, start_serve: StartServe, tmp_path: Path
) -> None:
    write_add_model(opt_ml / "model")
    server = start_serve(opt_ml).wait_ready()
    head = ('{"inputs":' + DEEP_ARRAY + "}").encode()
    sent = [
        *((body, "application/json") for body in BODIES.values()),
        (BODIES["a bare array"] + "\n", "application/jsonlines"),
        (head, f"application/vnd.sagemaker-triton.binary+json;json-header-size={len(head)}"),
    ]
    for body, content_type in sent:
        response = requests.post(
            f"{server.url}/invocations",
            data=body,
            headers={"Content-Type": content_type},
            timeout=60,
        )
        assert response.status_code == 400, (content_type, response.text[:300])
        assert "nest" in response.json()["error"], response.text[:300]
    ok = requests.post(
        f"{server.url}/invocations",
        data='{"inputs":' + ADD_INPUTS + "}",
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert ok.status_code == 200, ok.text
    assert "RecursionError" not in server.output and "Traceback" not in server.output

    mme_ml = tmp_path / "mme"
    (mme_ml / "model").mkdir(parents=True)
    (mme_ml / "models").mkdir()
    mme = start_serve(mme_ml, SAGEMAKER_MULTI_MODEL="true").wait_ready()
    load = requests.post(f"{mme.url}/models", data=BODIES["an object"], timeout=60)
    assert load.status_code == 400, load.text[:300]
    assert "nest" in load.json()["error"]
    assert "Traceback" not in mme.output
