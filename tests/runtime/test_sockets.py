"""serve's internal services listen on unix sockets only nginx's workers can reach.

nginx's workers run as nobody:nogroup under root, so each socket is owned by
root, group nogroup, mode 0660 (0600 when serve is not root: the workers are
then serve's own user). Any other user of the machine, model code among
them, gets EACCES: the services trust what arrives on their sockets (the
front's internal headers: the model, the route).
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import requests
from websockets.asyncio.client import connect

from tests.conftest import ServeProcess, add_request, write_add_model

StartServe = Callable[..., ServeProcess]
CONNECT = """
import socket, sys
client = socket.socket(socket.AF_UNIX)
try:
    client.connect(sys.argv[1])
except PermissionError:
    sys.exit(13)
sys.exit(0)
"""


def test_sockets_are_for_nginx_alone(opt_ml: Path, start_serve: StartServe) -> None:
    write_add_model(opt_ml / "model")
    # One v2 JSON writer (serve/payloads/writers.py) for the add model, so its socket is here.
    server = start_serve(
        opt_ml, SERVE_V2_JSON_WRITERS="1", SERVE_V2_JSON_MIN_VALUES="1"
    ).wait_ready()
    front = server.workspace() / "front"
    sockets = sorted(front.glob("*.sock"))
    names = {path.name for path in sockets}
    assert {"control.sock", "payloads.sock", "bidirectional.sock", "writer-0.sock"} <= names
    for path in sockets:
        status = path.stat()
        if os.geteuid() == 0:
            assert stat.S_IMODE(status.st_mode) == 0o660, (path, oct(status.st_mode))
            assert (status.st_uid, status.st_gid) == (0, 65534), path
            # Another user (the image's triton-server is uid 1000) cannot connect.
            other_user = ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups"]
            refused = subprocess.run(
                [*other_user, sys.executable, "-c", CONNECT, str(path)], check=False
            )
            assert refused.returncode == 13, path
        else:
            assert stat.S_IMODE(status.st_mode) == 0o600, (path, oct(status.st_mode))

    # Every service still answers through nginx.
    v2 = requests.post(f"{server.url}/invocations", json=add_request([1] * 4, [2] * 4), timeout=30)
    assert v2.status_code == 200 and v2.json()["outputs"][0]["data"] == [3] * 4, v2.text
    csv = requests.post(
        f"{server.url}/invocations",
        data=b"1,2,3,4,1,1,1,1\n",
        headers={"Content-Type": "text/csv"},
        timeout=30,
    )
    assert csv.status_code == 200, csv.text
    assert requests.get(f"{server.url}/execution-parameters", timeout=10).status_code == 200

    async def stream() -> str:
        address = f"ws://127.0.0.1:{server.port}/invocations-bidirectional-stream"
        async with connect(address) as ws:
            # No chunk to send: the refusal comes as the stream opens, then its close
            # (a chunk sent meanwhile could meet the closed stream).
            return str(await ws.recv())

    # The add model takes two inputs: the stream server answers (its refusal, on its socket).
    assert "SERVE_PAYLOAD_INPUT" in asyncio.run(stream())
