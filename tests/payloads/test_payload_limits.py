"""What a body declares is checked against what it carries and the declared limits.

Issue 24: a body must not make the payload service allocate, or work, in
proportion to what it *says* it holds (a .npy header's shape, a count of
records) rather than to what it carries; every limit is a setting that the
refusal names.
"""

from __future__ import annotations

import ast
import gzip
import json
import socket
import struct
import time
import zlib
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import ServeProcess
from tests.payloads.conftest import start_payload_server
from tests.payloads.test_large_bodies import reset_peak_memory, status_field

MEBIBYTE = 1024 * 1024


@pytest.fixture(scope="module")
def batch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """The payload models in a batch transform job: bodies up to 100 MB."""
    server = start_payload_server(tmp_path_factory.mktemp("limits"), SAGEMAKER_BATCH="true")
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """A version 1.0 .npy header declaring `shape`, padded as numpy pads it."""
    text = repr({"descr": descr, "fortran_order": False, "shape": shape})
    assert ast.literal_eval(text)["shape"] == shape
    length = 10 + len(text) + 1
    padded = text + " " * (-length % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(padded)) + padded.encode()


def invoke(
    server: ServeProcess, body: bytes, content_type: str, **headers: str
) -> requests.Response:
    return requests.post(
        f"{server.url}/invocations",
        data=body,
        headers={"Content-Type": content_type, **headers},
        timeout=120,
    )


def test_a_npy_header_declaring_records_it_does_not_carry_costs_nothing(
    batch_server: ServeProcess,
) -> None:
    # 128 bytes whose header says 4e9 records of no values each: before the fix the
    # service built 4e9 / max_batch_size ranges (1.5 s, 674 MB) before checking one.
    body = npy_header((4_000_000_000, 0))
    assert len(body) == 128
    assert invoke(batch_server, b"42,7", "text/csv").status_code == 200
    before = reset_peak_memory(batch_server.process.pid)
    started = time.monotonic()
    response = invoke(batch_server, body, "application/x-npy")
    elapsed = time.monotonic() - started
    growth = status_field(batch_server.process.pid, "VmHWM") - before
    print(f"a 128-byte .npy declaring 4e9 records: {elapsed:.2f} s, serve grew {growth} bytes")
    assert response.status_code == 400, response.text
    assert "shape [4000000000, 0] holds no values" in response.json()["error"]
    # The work the header asked for shows in memory, which a busy machine leaves alone.
    assert growth < 16 * MEBIBYTE, growth


def test_records_past_serve_max_records_are_refused_naming_it(batch_server: ServeProcess) -> None:
    # 20,000,001 rows of one byte: a real body of that many records, refused by count
    # before any record becomes a tensor.
    body = npy_header((20_000_001, 1), "|u1") + bytes(20_000_001)
    response = invoke(batch_server, body, "application/x-npy")
    assert response.status_code == 413, response.text
    assert "SERVE_MAX_RECORDS=20000000" in response.json()["error"]


def test_triton_requests_past_serve_max_chunks_are_refused_naming_it(
    batch_server: ServeProcess,
) -> None:
    # echo takes 8 records a request: 16,384 requests hold 131,072 records at most.
    lines = b"a\n" * (16_384 * 8 + 1)
    response = invoke(
        batch_server,
        lines,
        "text/csv",
        **{"X-Amzn-SageMaker-Custom-Attributes": "target_model=echo"},
    )
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert "SERVE_MAX_CHUNKS=16384" in error and "at most 131072 records" in error
    fits = invoke(
        batch_server,
        b"a\n" * 2000,
        "text/csv",
        **{"X-Amzn-SageMaker-Custom-Attributes": "target_model=echo"},
    )
    assert fits.status_code == 200 and fits.text.split() == ["echo:a"] * 2000


def v2_body(users: list[int], items: list[int]) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {"name": "user_id", "shape": [len(users), 1], "datatype": "INT64", "data": users},
                {"name": "item_id", "shape": [len(items), 1], "datatype": "INT64", "data": items},
            ]
        }
    ).encode()


@pytest.mark.parametrize(
    ("content_type", "plain"),
    [
        # nginx's own path: v2 JSON goes straight to Triton, which inflates gzip itself.
        ("application/json", v2_body([42], [7])),
        # The payload service's path.
        ("text/csv", b"42,7\n"),
    ],
)
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "gzip, gzip"])
def test_compressed_bodies_are_refused_not_inflated_past_the_limit(
    batch_server: ServeProcess, content_type: str, plain: bytes, encoding: str
) -> None:
    # A body compressed 1000:1 passes nginx's byte limit as sent; Triton would inflate it
    # without any bound. serve bounds bodies as sent, so it takes none compressed.
    body = gzip.compress(plain) if encoding.startswith("gzip") else zlib.compress(plain)
    response = invoke(batch_server, body, content_type, **{"Content-Encoding": encoding})
    assert response.status_code == 415, response.text
    error = response.json()["error"]
    assert "Content-Encoding" in error and "uncompressed" in error
    # identity is no encoding at all.
    fine = invoke(batch_server, plain, content_type, **{"Content-Encoding": "identity"})
    assert fine.status_code == 200, fine.text


def test_the_payload_service_refuses_compressed_bodies_itself(batch_server: ServeProcess) -> None:
    # What reaches the service's socket without nginx (a v2 JSON writer's, say) too.
    socket_path = batch_server.workspace() / "front" / "payloads.sock"
    body = gzip.compress(b"42,7\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(30)
        connection.connect(str(socket_path))
        connection.sendall(
            b"POST /_serve/invocations HTTP/1.1\r\nHost: x\r\nX-Serve-Model: ncf_food\r\n"
            b"Content-Type: text/csv\r\nContent-Encoding: gzip\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            piece = connection.recv(65536)
            if not piece:
                break
            answer += piece
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 415"), answer
    assert "Content-Encoding" in json.loads(payload)["error"]
