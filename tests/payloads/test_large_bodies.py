"""Bodies larger than real-time's 6 MB: asynchronous inference (1 GB) and batch transform.

The limit follows what SageMaker says or the user configures; bodies past
SERVE_BODY_BUFFER_BYTES are written to disk by nginx and by the payload
service instead of being held whole in memory, and Triton is given the limit
where its release has one.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests

from serve.settings import MEBIBYTE, Settings
from serve.triton.install import locate_triton
from tests.conftest import ServeProcess, write_add_model

StartServe = Callable[..., ServeProcess]

BINARY_TYPE = "application/vnd.sagemaker-triton.binary+json"
MEASURE_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "DATA").as_numpy()
            checksum = int(data.sum(dtype=np.uint64))
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("SIZE", np.array([data.size], dtype=np.int64)),
                pb_utils.Tensor("CHECKSUM", np.array([checksum], dtype=np.int64)),
            ]))
        return responses
"""


def write_measure_model(repository: Path) -> None:
    """A model that answers the size and byte sum of one UINT8 input of any length."""
    folder = repository / "measure"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.py").write_text(textwrap.dedent(MEASURE_PY))
    (folder / "config.pbtxt").write_text(
        textwrap.dedent(
            """
            name: "measure"
            backend: "python"
            max_batch_size: 0
            input [ { name: "DATA", data_type: TYPE_UINT8, dims: [ -1 ] } ]
            output [
              { name: "SIZE", data_type: TYPE_INT64, dims: [ 1 ] },
              { name: "CHECKSUM", data_type: TYPE_INT64, dims: [ 1 ] }
            ]
            instance_group [ { kind: KIND_CPU, count: 1 } ]
            """
        )
    )


def binary_body(data: bytes) -> tuple[bytes, str]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "DATA",
                    "shape": [len(data)],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        }
    ).encode()
    return header + data, f"{BINARY_TYPE};json-header-size={len(header)}"


def status_field(pid: int, field: str) -> int:
    """A memory figure of /proc/PID/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def reset_peak_memory(pid: int) -> int:
    """Start `pid`'s peak resident memory (VmHWM) afresh; returns its resident memory now."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return status_field(pid, "VmRSS")


def test_bodies_far_above_the_memory_bound_are_spooled_not_held(
    opt_ml: Path, start_serve: StartServe, enterable_tmp: Path
) -> None:
    write_measure_model(opt_ml / "model")
    server = start_serve(
        opt_ml,
        SERVE_WORKDIR=str(enterable_tmp),
        # A batch transform job with MaxPayloadInMB=16; bodies past 64 KiB go to disk.
        SAGEMAKER_BATCH="true",
        SAGEMAKER_MAX_PAYLOAD_IN_MB="16",
        SERVE_BODY_BUFFER_BYTES="65536",
    ).wait_ready()
    data = np.random.default_rng(7).integers(0, 256, 8 * MEBIBYTE, dtype=np.uint8).tobytes()
    expected = {"SIZE": len(data), "CHECKSUM": int(np.frombuffer(data, np.uint8).sum())}
    body = binary_body(data)[0]

    def invoke(data: bytes, accept: str) -> requests.Response:
        body, content_type = binary_body(data)
        headers = {"Content-Type": content_type, "Accept": accept}
        return requests.post(f"{server.url}/invocations", data=body, headers=headers, timeout=120)

    # Both paths warmed with a small body: the figures below are what a large one adds.
    assert invoke(b"small", "application/json").status_code == 200
    assert invoke(b"small", "text/csv").status_code == 200
    front = {pid: reset_peak_memory(pid) for pid in server.child_pids("nginx")}
    service = reset_peak_memory(server.process.pid)

    # nginx to Triton (native), then nginx, the payload service and Triton (a CSV answer).
    native = invoke(data, "application/json")
    assert native.status_code == 200, native.text
    assert {o["name"]: o["data"][0] for o in native.json()["outputs"]} == expected
    adapted = invoke(data, "text/csv")
    assert adapted.status_code == 200, adapted.text
    assert adapted.text.split() == [f"{expected['SIZE']},{expected['CHECKSUM']}"]

    nginx_growth = max(status_field(pid, "VmHWM") - rss for pid, rss in front.items())
    service_growth = status_field(server.process.pid, "VmHWM") - service
    print(f"peak growth for an {len(body)}-byte body: nginx {nginx_growth}, serve {service_growth}")
    assert nginx_growth < len(body) // 4
    assert service_growth < len(body) // 2
    # A simple-shape JSON body past the bound: nginx cannot look at a body on disk, so
    # Triton refuses it first and nginx sends it again, from its file, to be adapted.
    values = list(data[:100_000])
    simple = requests.post(
        f"{server.url}/invocations", json={"inputs": {"DATA": [values]}}, timeout=120
    )
    assert simple.status_code == 200, simple.text
    assert simple.json() == {"predictions": [{"SIZE": len(values), "CHECKSUM": sum(values)}]}
    # Nothing is left on disk once the answers are out.
    assert not any((enterable_tmp / "run" / "front" / "client_body").rglob("*"))

    too_large = requests.post(
        f"{server.url}/invocations",
        data=b"\0" * (16 * MEBIBYTE + 1),
        headers={"Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert too_large.status_code == 413
    assert "SAGEMAKER_MAX_PAYLOAD_IN_MB" in too_large.json()["error"]


@pytest.mark.parametrize(
    ("environ", "limit", "set_by"),
    [
        ({}, 6 * MEBIBYTE, "SERVE_MAX_BODY_BYTES"),
        ({"SAGEMAKER_BATCH": "true"}, 100 * MEBIBYTE, "SAGEMAKER_BATCH"),
        (
            {"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20"},
            20 * MEBIBYTE,
            "SAGEMAKER_MAX_PAYLOAD_IN_MB",
        ),
        ({"SERVE_ASYNC_INFERENCE": "true"}, 1024 * MEBIBYTE, "SERVE_ASYNC_INFERENCE"),
        (
            {"SERVE_ASYNC_INFERENCE": "true", "SERVE_MAX_BODY_BYTES": "5000"},
            5000,
            "SERVE_MAX_BODY_BYTES",
        ),
    ],
)
def test_the_body_limit_is_realtimes_unless_batch_or_async_says_otherwise(
    environ: dict[str, str], limit: int, set_by: str
) -> None:
    settings = Settings.from_environ(environ)
    assert settings.max_body_bytes == limit
    assert settings.max_body_set_by == set_by
    # The memory bound never exceeds the limit; real-time bodies stay in memory.
    assert settings.body_buffer_bytes == min(limit, 6 * MEBIBYTE)


def newer_triton(folder: Path, record: Path) -> Path:
    """A TRITONSERVER_BIN whose --help offers --http-max-input-size, as releases after 2.51 do.

    It records the value serve passes, then runs the real Triton (which lacks
    the flag) without it, beside links to the real backends and stubs.
    """
    install = locate_triton(None)
    return install.wrapped(
        folder,
        f"#!{sys.executable}\n"
        + textwrap.dedent(
            f"""
            import os, subprocess, sys
            real, flag = {str(install.binary)!r}, "--http-max-input-size"
            if "--help" in sys.argv:
                listing = subprocess.run([real, "--help"], capture_output=True, text=True)
                sys.stderr.write(listing.stderr + f"  {{flag}} <integer>\\n")
                sys.exit(1)
            given = [a for a in sys.argv[1:] if a.startswith(flag + "=")]
            with open({str(record)!r}, "w") as out:
                out.write("\\n".join(given))
            os.execv(real, [real] + [a for a in sys.argv[1:] if a not in given])
            """
        ),
    )


def test_triton_gets_the_limit_where_its_release_has_one(
    opt_ml: Path, start_serve: StartServe, tmp_path: Path
) -> None:
    write_add_model(opt_ml / "model")
    record = tmp_path / "flags"
    binary = newer_triton(tmp_path / "triton", record)
    server = start_serve(
        opt_ml, TRITONSERVER_BIN=str(binary), SERVE_ASYNC_INFERENCE="true"
    ).wait_ready()
    # An adapted request's binary tensors can be larger than its text body.
    assert record.read_text() == f"--http-max-input-size={4 * 1024 * MEBIBYTE}"
    assert requests.post(
        f"{server.url}/invocations",
        data=b"A,A,A,A,B,B,B,B\n1,2,3,4,1,1,1,1\n",
        headers={"Content-Type": "text/csv"},
        timeout=30,
    ).text.split() == ["2.0,3.0,4.0,5.0"]
    server.stop()
    # Triton 2.51 has no such flag: serve passes none.
    plain = start_serve(opt_ml, SERVE_ASYNC_INFERENCE="true").wait_ready()
    (pid,) = plain.child_pids("tritonserver", direct=True)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert not any(a.startswith("--http-max-input-size") for a in argv)
