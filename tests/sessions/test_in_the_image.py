"""Sessions and a bidirectional stream as SageMaker runs the image (and locally).

Marked `container`: with `--image`, the same test runs the image with podman
(the examples copied into a read-only /opt/ml/model), so the image's own
nginx, websockets and Triton's gRPC behind the stream are what answer.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from websockets.asyncio.client import connect

from tests.conftest import ServeProcess
from tests.sessions.conftest import SESSIONS_EXAMPLES

SESSION = "X-Amzn-SageMaker-Session-Id"


@pytest.mark.container
def test_sessions_and_streams_in_the_image(
    opt_ml: Path, start_serve: Callable[..., ServeProcess]
) -> None:
    shutil.copytree(SESSIONS_EXAMPLES / "chat_memory", opt_ml / "model" / "chat_memory")
    shutil.copytree(SESSIONS_EXAMPLES / "speech_stream", opt_ml / "model" / "speech_stream")
    server = start_serve(opt_ml, SAGEMAKER_TRITON_DEFAULT_MODEL_NAME="chat_memory").wait_ready()

    def post(body: object, session: str) -> requests.Response:
        return requests.post(
            f"{server.url}/invocations", json=body, headers={SESSION: session}, timeout=30
        )

    opened = post({"inputs": "hi"}, "NEW_SESSION")
    assert opened.status_code == 200, opened.text
    session = opened.headers["X-Amzn-SageMaker-New-Session-Id"].split(";")[0]
    answer = post({"inputs": "again"}, session).json()["predictions"][0]
    assert json.loads(answer["reply"])["remembered"] == ["hi", "again"]
    closed = post({"requestType": "CLOSE"}, session)
    assert closed.headers["X-Amzn-SageMaker-Closed-Session-Id"] == session

    async def stream() -> list[str]:
        route = f"ws://127.0.0.1:{server.port}/invocations-bidirectional-stream"
        async with connect(f"{route}?target_model=speech_stream") as ws:
            await ws.send(struct.pack("<3h", 10, 20, 30))
            first = await ws.recv()
            await ws.send(b"")
            return [first, *[m async for m in ws]]  # type: ignore[list-item]

    answers = [json.loads(m) for m in asyncio.run(stream())]
    assert answers == [
        {"chunk": 1, "samples": 3, "rms": 21.6},
        {"final": True, "chunks": 1, "samples": 3},
    ]
