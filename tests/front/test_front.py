"""What a client sees on the public port: routes, payloads, errors, exposure."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from serve.errors import EMPTY_BODY, GET_ONLY, MALFORMED_BINARY_TYPE, POST_ONLY
from serve.front.nginx import shared_rules
from tests.conftest import (
    FORGED_INTERNAL_HEADERS,
    ServeProcess,
    add_request,
    front_config,
    own_address,
    process_state,
    write_add_model,
)

StartServe = Callable[..., ServeProcess]

BINARY_TYPE = "application/vnd.sagemaker-triton.binary+json"
REPO = Path(__file__).resolve().parents[2]


def ncf_request(users: list[int], items: list[int]) -> dict:
    return {
        "inputs": [
            {"name": "user_id", "shape": [len(users), 1], "datatype": "INT64", "data": users},
            {"name": "item_id", "shape": [len(items), 1], "datatype": "INT64", "data": items},
        ]
    }


def binary_ncf_request(users: list[int], items: list[int]) -> tuple[bytes, int]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": [len(ids), 1],
                    "datatype": "INT64",
                    "parameters": {"binary_data_size": 8 * len(ids)},
                }
                for name, ids in (("user_id", users), ("item_id", items))
            ],
            "outputs": [{"name": "score", "parameters": {"binary_data": True}}],
        }
    ).encode()
    tensors = struct.pack(f"<{len(users)}q", *users) + struct.pack(f"<{len(items)}q", *items)
    return header + tensors, len(header)


def invoke(server: ServeProcess, body: bytes | str, content_type: str, **kw) -> requests.Response:
    return requests.post(
        f"{server.url}/invocations",
        data=body,
        headers={"Content-Type": content_type, **kw.pop("headers", {})},
        timeout=30,
        **kw,
    )


def test_ping_answers_200_with_empty_body_when_ready(examples_server: ServeProcess) -> None:
    response = requests.get(f"{examples_server.url}/ping", timeout=2)
    assert response.status_code == 200
    assert response.content == b""


def test_json_invocation_scores_user_items(examples_server: ServeProcess) -> None:
    response = invoke(
        examples_server, json.dumps(ncf_request([3, 3, 3], [10, 20, 30])), "application/json"
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["model_name"] == "ncf_food"
    scores = body["outputs"][0]["data"]
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)


def test_binary_invocation_matches_json_scores(examples_server: ServeProcess) -> None:
    users, items = [5, 6, 7], [1, 2, 3]
    expected = invoke(
        examples_server, json.dumps(ncf_request(users, items)), "application/json"
    ).json()["outputs"][0]["data"]
    body, size = binary_ncf_request(users, items)
    response = invoke(examples_server, body, f"{BINARY_TYPE};json-header-size={size}")
    assert response.status_code == 200, response.text
    content_type = response.headers["Content-Type"]
    assert content_type.startswith(f"{BINARY_TYPE};json-header-size=")
    header_size = int(content_type.rsplit("=", 1)[1])
    header = json.loads(response.content[:header_size])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 12
    scores = struct.unpack("<3f", response.content[header_size:])
    assert scores == pytest.approx(expected, rel=1e-6)


def test_v2_json_asking_for_binary_outputs_gets_them(examples_server: ServeProcess) -> None:
    # The README's advice for large outputs: a v2 JSON request with binary_data_output
    # is answered in Triton's binary framing, its content type SageMaker's.
    users, items = [5, 6, 7], [1, 2, 3]
    request = ncf_request(users, items)
    expected = invoke(examples_server, json.dumps(request), "application/json").json()
    request["parameters"] = {"binary_data_output": True}
    response = invoke(examples_server, json.dumps(request), "application/json")
    assert response.status_code == 200, response.text
    content_type = response.headers["Content-Type"]
    assert content_type.startswith(f"{BINARY_TYPE};json-header-size=")
    header_size = int(content_type.rsplit("=", 1)[1])
    scores = struct.unpack("<3f", response.content[header_size:])
    assert scores == pytest.approx(expected["outputs"][0]["data"], rel=1e-6)


@pytest.mark.parametrize(
    "content_type",
    [
        BINARY_TYPE,
        f"{BINARY_TYPE};json-header-size=",
        f"{BINARY_TYPE};json-header-size=abc",
        f"{BINARY_TYPE};json-header-size=-5",
        f"{BINARY_TYPE};json-header-size=12abc",
        f"{BINARY_TYPE};json-header-size=99999999999999999999",
        f"{BINARY_TYPE};json-header=12",
        f"{BINARY_TYPE};json-header-size=100000",  # larger than the body
    ],
)
def test_malformed_binary_header_is_400_with_json_error(
    examples_server: ServeProcess, content_type: str
) -> None:
    body, _ = binary_ncf_request([1], [1])
    response = invoke(examples_server, body, content_type)
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    # nginx refuses the spellings it can see; the payload service the size it cannot:
    # both say the same.
    assert response.json()["error"] == MALFORMED_BINARY_TYPE


def test_empty_body_is_400_with_json_error(examples_server: ServeProcess) -> None:
    response = invoke(examples_server, b"", "application/json")
    assert response.status_code == 400
    assert response.json()["error"] == EMPTY_BODY


def test_nginx_takes_every_shared_rule_from_python(tmp_path: Path) -> None:
    """The template spells no shared rule; the rendered config holds each as Python has it."""
    template = (REPO / "serve/front/templates/nginx.conf.j2").read_text()
    for literal in (
        "A-Za-z0-9",
        "sagemaker-triton",
        POST_ONLY,
        GET_ONLY,
        EMPTY_BODY,
        "malformed C",
    ):
        assert literal not in template, literal
    for multi_model in ("false", "true"):
        front = front_config(
            tmp_path,
            {"SAGEMAKER_MULTI_MODEL": multi_model},
            default_model=None if multi_model == "true" else "add",
        )
        rendered = front.render()
        rules = shared_rules()
        used = [key for key, value in rules.items() if value in rendered]
        single_model_only = {"target_model_name", "custom_attributes_header"}
        expected = set(rules) - (
            single_model_only if multi_model == "true" else {"direct_model_name"}
        )
        assert set(used) >= expected, expected - set(used)


@pytest.mark.parametrize("body", [b"{not json", b'{"inputs": [', b"\xff\xfe\x00garbage"])
def test_invalid_json_is_400_not_500(examples_server: ServeProcess, body: bytes) -> None:
    response = invoke(examples_server, body, "application/json")
    assert response.status_code == 400, response.text
    assert "not valid JSON" in response.json()["error"]


def test_model_error_reaches_caller_with_reason(examples_server: ServeProcess) -> None:
    response = invoke(examples_server, json.dumps(ncf_request([999999], [1])), "application/json")
    assert response.status_code == 400
    assert "user_id 999999 is outside the trained range" in response.json()["error"]


def test_wrong_input_name_is_a_4xx_with_tritons_reason(examples_server: ServeProcess) -> None:
    request = ncf_request([1], [1])
    request["inputs"][0]["name"] = "nobody"
    response = invoke(examples_server, json.dumps(request), "application/json")
    assert 400 <= response.status_code < 500
    assert "nobody" in response.json()["error"]


def test_body_over_the_limit_is_413(examples_server: ServeProcess) -> None:
    response = invoke(examples_server, b"0" * (6 * 1024 * 1024 + 1), "application/json")
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]


def test_get_invocations_is_405(examples_server: ServeProcess) -> None:
    response = requests.get(f"{examples_server.url}/invocations", timeout=5)
    assert response.status_code == 405
    assert response.json()["error"]


def test_custom_attributes_and_unknown_headers_are_ignored_safely(
    examples_server: ServeProcess,
) -> None:
    response = invoke(
        examples_server,
        json.dumps(ncf_request([1], [2])),
        "application/json",
        headers={
            "X-Amzn-SageMaker-Custom-Attributes": "trace=abc,debug=false",
            "X-Something-Unknown": "x" * 2000,
            "Accept": "application/json",
        },
    )
    assert response.status_code == 200


@pytest.mark.parametrize("content_type", ["application/json", "text/csv"])
def test_a_clients_copy_of_the_fronts_own_headers_changes_nothing(
    examples_server: ServeProcess, content_type: str
) -> None:
    body = json.dumps(ncf_request([42], [7])) if content_type == "application/json" else "42,7\n"
    plain = invoke(examples_server, body, content_type)
    forged = invoke(examples_server, body, content_type, headers=FORGED_INTERNAL_HEADERS)
    assert plain.status_code == forged.status_code == 200, forged.text
    assert forged.content == plain.content


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/health/ready"),
        ("GET", "/v2/models/ncf_food"),
        ("POST", "/v2/models/ncf_food/infer"),
        ("POST", "/v2/repository/index"),
        ("POST", "/v2/repository/models/ncf_food/unload"),
        ("GET", "/v2/systemsharedmemory/status"),
        ("POST", "/v2/systemsharedmemory/region/x/register"),
        ("GET", "/v2/cudasharedmemory/status"),
        ("GET", "/v2/trace/setting"),
        ("POST", "/v2/logging"),
        ("GET", "/metrics/"),
        ("GET", "/metrics/../v2/health/ready"),
        ("GET", "/models"),
        ("POST", "/models"),
        ("POST", "/models/ncf_food/invoke"),
        ("GET", "/_serve/ping"),
        ("POST", "/_serve/invocation-error"),
        ("POST", "/_serve/read_body"),
    ],
)
def test_only_sagemaker_routes_are_public(
    examples_server: ServeProcess, method: str, path: str
) -> None:
    response = requests.request(method, f"{examples_server.url}{path}", data=b"{}", timeout=5)
    assert response.status_code == 404
    assert "no such route" in response.json()["error"]
    # The repository-control call above must not have touched the model.
    assert examples_server.ping_status() == 200


IPV4_MAPPED = "0000000000000000FFFF0000"


def listening_sockets(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the given processes listen on."""
    inodes: set[str] = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = str(fd.readlink()) if fd.is_symlink() else ""
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                address, port = fields[1].split(":")
                if width == 32 and address.startswith(IPV4_MAPPED):
                    # gRPC binds 127.0.0.1 as IPv6's IPv4-mapped loopback, ::ffff:127.0.0.1.
                    address, width = address[len(IPV4_MAPPED) :], 8
                found.add((address if width == 32 else _ipv4(address), int(port, 16)))
    return found


def _ipv4(hex_address: str) -> str:
    return ".".join(str(int(hex_address[i : i + 2], 16)) for i in (6, 4, 2, 0))


def test_internal_listeners_bind_loopback_only(examples_server: ServeProcess) -> None:
    triton = examples_server.child_pids("tritonserver")
    nginx = examples_server.child_pids("nginx")
    assert triton and nginx
    triton_sockets = listening_sockets(triton)
    assert triton_sockets, "Triton listens somewhere"
    assert {address for address, _ in triton_sockets} == {"127.0.0.1"}
    # The public port is the only one reachable from outside, and nginx owns it.
    public = {port for address, port in listening_sockets(nginx) if address != "127.0.0.1"}
    assert public == {examples_server.port}
    serve_sockets = listening_sockets([examples_server.process.pid])
    assert all(address == "127.0.0.1" for address, _ in serve_sockets)


def test_from_the_machines_own_address_only_the_public_port_answers(
    examples_server: ServeProcess,
) -> None:
    address = own_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    server = examples_server
    pids = [server.process.pid, *server.child_pids("tritonserver"), *server.child_pids("nginx")]
    listening = {port for _, port in listening_sockets(pids)}
    assert len(listening) > 1, listening  # Triton's own port is among them
    assert {port for port in listening if _connects(address, port)} == {server.port}
    for path in ("/v2/repository/index", "/v2/logging", "/v2/systemsharedmemory/status"):
        response = requests.post(f"http://{address}:{server.port}{path}", data=b"{}", timeout=5)
        assert response.status_code == 404, (path, response.text)


def _connects(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=2).close()
    except OSError:
        return False
    return True


def raw_exchange(server: ServeProcess, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes no HTTP library would write; the status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines)
    }
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return int(status_line.split(" ")[1]), headers, body


def _unchunk(body: bytes) -> bytes:
    parts = []
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        parts.append(body[:size])
        body = body[size + 2 :]
    return b"".join(parts)


NGINX_OWN_ERRORS = {
    "malformed request line": (b"GARBAGE\r\n\r\n", 400),
    "HTTP/1.1 without Host": (b"GET /ping HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
    "TRACE": (b"TRACE /invocations HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405),
    "body over the limit, announced": (
        b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\nConnection: close\r\n\r\n",
        413,
    ),
    "URI too long": (
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        414,
    ),
    "header too large": (
        b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: "
        + b"b" * 9000
        + b"\r\nConnection: close\r\n\r\n",
        431,
    ),
    "broken chunked body": (
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        400,
    ),
    "unknown transfer coding": (
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n"
        b"Connection: close\r\n\r\n",
        501,
    ),
    "HTTP/2.0 in a request line": (b"GET /ping HTTP/2.0\r\nHost: x\r\n\r\n", 505),
}


@pytest.mark.parametrize("case", NGINX_OWN_ERRORS)
def test_errors_nginx_writes_itself_are_json(examples_server: ServeProcess, case: str) -> None:
    request, status = NGINX_OWN_ERRORS[case]
    answer_status, headers, body = raw_exchange(examples_server, request)
    assert answer_status == status, body
    assert headers["content-type"] == "application/json", headers
    assert json.loads(body)["error"], body


def test_an_internal_service_gone_is_json_too(opt_ml: Path, start_serve: StartServe) -> None:
    server = start_serve(opt_ml, SAGEMAKER_MULTI_MODEL="true")
    # Before any request: nginx keeps connections it has used open.
    server.wait_until(server.has_workspace, 30, "Triton to start")
    front = server.workspace() / "front"
    (front / "control.sock").unlink()
    (front / "payloads.sock").unlink()
    server.wait_until(lambda: _answers(f"{server.url}/"), 30, "nginx to answer")
    for method, path in (("GET", "/models"), ("POST", "/models/a%20b/invoke")):
        response = requests.request(method, f"{server.url}{path}", json={}, timeout=10)
        assert response.status_code in (502, 503), response.text
        assert response.headers["Content-Type"] == "application/json"
        assert response.json()["error"]


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 404
    except requests.RequestException:
        return False


def all_stopped(pid: int) -> bool:
    """Every thread of process `pid` is stopped (state T in /proc)."""
    states = [process_state(stat) for stat in Path(f"/proc/{pid}/task").glob("*/stat")]
    return bool(states) and all(state == "T" for state in states)


def test_an_internal_service_too_slow_is_json_504(opt_ml: Path, start_serve: StartServe) -> None:
    # nginx waits for /models as long as a load may take: 2 x 1 s and a margin here.
    server = start_serve(
        opt_ml, SAGEMAKER_MULTI_MODEL="true", SERVE_MODEL_LOAD_TIMEOUT="1"
    ).wait_ready()
    os.kill(server.process.pid, signal.SIGSTOP)  # the control app answers nothing
    # Only once every thread has stopped: a fresh run's answer began before (its head
    # came, its 14 bytes did not).
    server.wait_until(lambda: all_stopped(server.process.pid), 10, "serve to stop")
    try:
        response = requests.get(f"{server.url}/models", timeout=30)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert response.status_code == 504, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"]


@pytest.mark.container
def test_native_and_simple_payloads_reach_the_model(
    opt_ml: Path, start_serve: Callable[..., ServeProcess]
) -> None:
    """The payload paths end to end with a numpy-only model (no torch in the test images)."""
    write_add_model(opt_ml / "model")
    server = start_serve(opt_ml).wait_ready()
    assert requests.get(f"{server.url}/ping", timeout=2).content == b""
    native = invoke(server, json.dumps(add_request([1, 2, 3, 4], [1, 1, 1, 1])), "application/json")
    assert native.status_code == 200, native.text
    assert native.json()["outputs"][0]["data"] == [2, 3, 4, 5]

    header = json.dumps(
        {
            "inputs": [
                {"name": name, "shape": [1, 4], "datatype": "FP32"}
                | {"parameters": {"binary_data_size": 16}}
                for name in ("A", "B")
            ],
            "outputs": [{"name": "C", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + struct.pack("<4f", 1, 2, 3, 4) + struct.pack("<4f", 1, 1, 1, 1)
    binary = invoke(server, body, f"{BINARY_TYPE};json-header-size={len(header)}")
    assert binary.status_code == 200, binary.text
    size = int(binary.headers["Content-Type"].split("json-header-size=")[1])
    assert struct.unpack("<4f", binary.content[size:]) == (2, 3, 4, 5)

    simple = invoke(
        server,
        json.dumps({"inputs": {"A": [[1, 2, 3, 4]], "B": [[2, 2, 2, 2]]}}),
        "application/json",
    )
    assert simple.status_code == 200, simple.text
    assert simple.json() == {"predictions": [[3, 4, 5, 6]]}
    csv = invoke(server, "A,A,A,A,B,B,B,B\n1,2,3,4,1,1,1,1\n0,0,0,0,5,5,5,5\n", "text/csv")
    assert csv.status_code == 200, csv.text
    assert csv.text.splitlines() == ["2.0,3.0,4.0,5.0", "5.0,5.0,5.0,5.0"]
