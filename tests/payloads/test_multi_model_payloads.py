"""Content types, Accept and streams on a multi-model endpoint's /models/NAME/invoke."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import requests

from tests.conftest import ServeProcess
from tests.multi_model.test_multi_model import load, upload_add
from tests.payloads.conftest import write_payload_models

StartServe = Callable[..., ServeProcess]


def upload_payload_model(opt_ml: Path, key: str, name: str) -> str:
    staging = opt_ml / "staging" / key
    write_payload_models(staging)
    url = opt_ml / "models" / key / "model"
    shutil.copytree(staging / name, url)
    return str(url)


def test_payloads_on_a_multi_model_endpoint(opt_ml: Path, start_serve: StartServe) -> None:
    mme = start_serve(opt_ml, SAGEMAKER_MULTI_MODEL="true").wait_ready()
    assert load(mme, "adder", upload_add(opt_ml, "adder")).status_code == 200
    odd = "team a+b.tar.gz"
    assert load(mme, odd, upload_add(opt_ml, "odd")).status_code == 200
    assert load(mme, "streamer", upload_payload_model(opt_ml, "s", "stream")).status_code == 200

    def invoke(name: str, body: str, content_type: str, accept: str = "*/*") -> requests.Response:
        return requests.post(
            f"{mme.url}/models/{name}/invoke",
            data=body,
            headers={"Content-Type": content_type, "Accept": accept},
            timeout=30,
        )

    row = "1,2,3,4,10,20,30,40\n"  # A then B; the optional DELAY is left out
    csv = invoke("adder", row * 2, "text/csv")
    assert csv.status_code == 200, csv.text
    assert csv.text == "11.0,22.0,33.0,44.0\n" * 2
    simple = invoke(
        "adder", json.dumps({"inputs": [[1, 2, 3, 4, 10, 20, 30, 40]]}), "application/json"
    )
    assert simple.json() == {"predictions": [[11.0, 22.0, 33.0, 44.0]]}
    named = invoke("team%20a+b.tar.gz", row, "text/csv", "application/json")
    assert named.status_code == 200, named.text
    assert named.json() == {"predictions": [[11.0, 22.0, 33.0, 44.0]]}

    missing = invoke("nobody", row, "text/csv")
    assert missing.status_code == 404 and "not loaded" in missing.json()["error"]
    unsupported = invoke("adder", "<x/>", "application/xml")
    assert unsupported.status_code == 415

    stream = invoke(
        "streamer", json.dumps({"inputs": "s", "parameters": {"max_tokens": 2}}), "application/json"
    )
    assert stream.status_code == 200, stream.text
    assert stream.headers["Transfer-Encoding"] == "chunked"
    assert [json.loads(line) for line in stream.text.splitlines()] == [
        {"text_output": "s-0"},
        {"text_output": "s-1"},
    ]

    # A model loaded again under the same name is read afresh (its signature is not stale).
    assert requests.delete(f"{mme.url}/models/adder", timeout=60).status_code == 200
    assert invoke("adder", row, "text/csv").status_code == 404
    assert load(mme, "adder", upload_payload_model(opt_ml, "e", "echo")).status_code == 200
    text = invoke("adder", "hi", "text/plain", "text/plain")
    assert text.status_code == 200, text.text
    assert text.text == "echo:hi\n"
