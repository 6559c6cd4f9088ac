"""Bidirectional streams over a real WebSocket, through nginx, to decoupled models in Triton.

The route is AWS's bidirectional streaming contract (`/invocations-bidirectional-stream`
on the public port, pings answered with pongs); each stream is its own sequence of
Triton's sequence batcher. The models are the speech_stream example and test models
that report, on serve's output, what Triton asked of them (cancellations, ENDs).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import socket
import struct
import time
from pathlib import Path

import pytest
import requests
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import ServeProcess
from tests.sessions.conftest import start_sessions_server

ROUTE = "/invocations-bidirectional-stream"


def url(server: ServeProcess, model: str | None = None) -> str:
    query = f"?target_model={model}" if model else ""
    return f"ws://127.0.0.1:{server.port}{ROUTE}{query}"


def pcm(*samples: int) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


async def finish(ws: ClientConnection) -> list[str]:
    """End the input (an empty message) and read the answers left, up to the close."""
    await ws.send(b"")
    return [message async for message in ws]  # type: ignore[misc]


async def remaining(ws: ClientConnection) -> list[str | bytes]:
    """The messages left before the server's close, whatever its code."""
    messages = []
    with contextlib.suppress(websockets.ConnectionClosed):
        async for message in ws:
            messages.append(message)
    return messages


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def streams_balanced(server: ServeProcess) -> bool:
    opened = len(re.findall(r"stream \d+ opened", server.output))
    ended = len(re.findall(r"stream \d+ ended", server.output))
    return opened == ended


def test_each_chunk_is_answered_as_it_arrives(sessions_server: ServeProcess) -> None:
    async def talk() -> None:
        async with connect(url(sessions_server, "speech_stream")) as ws:
            for index in range(1, 5):
                await ws.send(pcm(*([index * 100] * (index * 10))))
                # The answer comes before the next chunk is sent.
                partial = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert partial == {"chunk": index, "samples": index * 10, "rms": index * 100.0}
            tail = await finish(ws)
            assert [json.loads(m) for m in tail] == [{"final": True, "chunks": 4, "samples": 100}]
            assert ws.close_code == 1000

    run(talk())


def test_the_endpoint_model_streams_and_text_chunks_fill_numeric_inputs(
    sessions_server: ServeProcess,
) -> None:
    async def talk() -> None:
        # No target_model: the endpoint's model (chat_memory) is not decoupled, and still
        # streams (one answer per chunk); JSON text fills speech_stream's INT16 input.
        async with connect(url(sessions_server, "speech_stream")) as ws:
            await ws.send("[3, 4]")
            assert json.loads(await ws.recv())["samples"] == 2
            assert len(await finish(ws)) == 1
        async with connect(url(sessions_server)) as ws:
            await ws.send("hello")
            first = json.loads(await ws.recv())
            assert json.loads(first["reply"][0])["remembered"] == ["hello"]
            await ws.send("again")
            second = json.loads(await ws.recv())
            assert json.loads(second["reply"][0])["remembered"] == ["hello", "again"]
            closing = await finish(ws)
            # The END chunk's answer: the state the model let go of.
            assert json.loads(json.loads(closing[0])["reply"][0])["turn"] == 2

    run(talk())


def test_fifty_concurrent_streams_keep_order_and_their_own_state(
    sessions_server: ServeProcess,
) -> None:
    chunks = 6

    async def one(stream: int) -> None:
        async with connect(url(sessions_server, "speech_stream")) as ws:
            # Every chunk is sent before any answer is read: order is the server's doing.
            for chunk in range(chunks):
                await ws.send(pcm(*([stream] * (stream + chunk + 1))))
            answers = [json.loads(m) for m in await finish(ws)]
            assert [a.get("chunk") for a in answers[:-1]] == list(range(1, chunks + 1))
            assert [a["samples"] for a in answers[:-1]] == [
                stream + chunk + 1 for chunk in range(chunks)
            ]
            total = sum(stream + chunk + 1 for chunk in range(chunks))
            assert answers[-1] == {"final": True, "chunks": chunks, "samples": total}
            assert ws.close_code == 1000

    async def all_of_them() -> None:
        await asyncio.wait_for(asyncio.gather(*(one(s) for s in range(50))), 120)

    run(all_of_them())
    sessions_server.wait_until(lambda: streams_balanced(sessions_server), 10, "streams to end")


def test_pings_get_pongs(sessions_server: ServeProcess) -> None:
    async def ping() -> float:
        async with connect(url(sessions_server, "speech_stream"), ping_interval=None) as ws:
            waiter = await ws.ping(b"sagemaker")
            latency = await asyncio.wait_for(waiter, 5)
            await ws.send(pcm(1, 2))
            assert json.loads(await ws.recv())["chunk"] == 1
            return latency

    assert run(ping()) < 5


def test_a_model_error_ends_the_stream(sessions_server: ServeProcess) -> None:
    async def talk() -> None:
        async with connect(url(sessions_server, "speech_stream")) as ws:
            await ws.send(pcm(7, 7))
            assert json.loads(await ws.recv())["chunk"] == 1
            await ws.send(pcm(-32768))  # the example model refuses this chunk
            messages = await remaining(ws)
            assert json.loads(messages[-1]) == {"error": "refused chunk"}
            assert ws.close_code == 1011
        # The next stream is served as usual.
        async with connect(url(sessions_server, "speech_stream")) as ws:
            await ws.send(pcm(1))
            assert json.loads(await ws.recv())["chunk"] == 1

    run(talk())
    sessions_server.wait_until(
        lambda: "ended: model error" in sessions_server.output, 10, "the stream's end"
    )


def test_a_chunk_the_model_cannot_take_ends_the_stream(sessions_server: ServeProcess) -> None:
    async def talk() -> None:
        async with connect(url(sessions_server, "speech_stream")) as ws:
            await ws.send(b"\x01\x02\x03")  # not whole 16-bit samples
            messages = await remaining(ws)
            assert "whole INT16 values" in json.loads(messages[-1])["error"]
            assert ws.close_code == 1007

    run(talk())


def test_an_unknown_model_is_refused_before_the_upgrade(sessions_server: ServeProcess) -> None:
    async def talk() -> None:
        headers = {"X-Amzn-SageMaker-Custom-Attributes": "target_model=nope"}
        async with connect(url(sessions_server), additional_headers=headers):
            pass

    with pytest.raises(websockets.InvalidStatus) as refused:
        run(talk())
    assert refused.value.response.status_code == 404
    assert b"names no model" in refused.value.response.body


def test_the_query_string_cannot_name_a_model_nginx_did_not_check(
    sessions_server: ServeProcess,
) -> None:
    """target_model in the query string is nginx's to check, like the custom attributes'.

    The stream server used to read the query itself, after nginx had checked only the
    custom attributes: any model of Triton's, by any spelling, was reachable.
    """

    async def talk(query: str, **headers: str) -> None:
        address = f"ws://127.0.0.1:{sessions_server.port}{ROUTE}?{query}"
        async with connect(address, additional_headers=headers) as ws:
            await ws.send("0")
            await ws.recv()

    attributes = {"X-Amzn-SageMaker-Custom-Attributes": "target_model=speech_stream"}
    for query, headers in (
        ("target_model=unrouted%2Bstream", {}),
        ("target_model=unrouted%2Bstream", attributes),
        ("target_model=slow%5Fstream", {}),
    ):
        with pytest.raises(websockets.InvalidStatus) as refused:
            run(talk(query, **headers))
        assert refused.value.response.status_code == 404, query
        body = refused.value.response.body
        assert b"names no model" in body and b"query string" in body, body
    assert "opened on model 'unrouted+stream'" not in sessions_server.output
    # The query's name, checked, wins over the custom attributes'.
    run(talk("target_model=slow_stream", **attributes))


def test_a_client_that_disappears_cancels_its_triton_requests(
    sessions_server: ServeProcess,
) -> None:
    async def vanish() -> None:
        ws = await connect(url(sessions_server, "slow_stream"))
        await ws.send("30")  # thirty seconds of work
        await asyncio.sleep(1)
        ws.transport.abort()  # no close frame: the TCP connection is reset

    before = sessions_server.output.count("slow_stream: cancelled")
    run(vanish())
    # Triton cancelled the request in flight (the model saw it), then the stream's END
    # released its state; the handler ended.
    sessions_server.wait_until(
        lambda: sessions_server.output.count("slow_stream: cancelled") > before,
        15,
        "the model to see its request cancelled",
    )
    sessions_server.wait_until(
        lambda: "slow_stream: END" in sessions_server.output, 15, "the stream's END"
    )
    sessions_server.wait_until(lambda: streams_balanced(sessions_server), 10, "streams to end")
    assert "ended: client gone" in sessions_server.output


def stalled_client(server: ServeProcess, model: str, text: str) -> socket.socket:
    """A WebSocket client that sends one text message, then never reads.

    Written at the protocol level (RFC 6455): client libraries read ahead into
    memory of their own, which would hide the backpressure from the server.
    """
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    client.connect(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    client.sendall(
        (
            f"GET {ROUTE}?target_model={model} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += client.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    client.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return client


def test_a_client_that_stops_reading_is_closed(sessions_server: ServeProcess) -> None:
    client = stalled_client(sessions_server, "flood", "2000")  # 2000 answers of 64 KiB
    try:
        # SERVE_STREAM_SEND_TIMEOUT is 2 s here: the stream ends once the buffers between
        # the server and this client are full and it has waited that long.
        sessions_server.wait_until(
            lambda: "ended: backpressure" in sessions_server.output, 30, "backpressure"
        )
        sessions_server.wait_until(
            lambda: "flood: cancelled" in sessions_server.output, 15, "the model to be cancelled"
        )
        client.settimeout(10)
        received = 0
        while chunk := client.recv(1 << 20):
            received += len(chunk)
        # The connection was closed long before the model's 125 MiB were all sent.
        assert received < 2000 * 65536 // 4
    finally:
        client.close()
    sessions_server.wait_until(lambda: streams_balanced(sessions_server), 10, "streams to end")


def test_streaming_can_be_turned_off(tmp_path: Path) -> None:
    server = start_sessions_server(tmp_path, SERVE_BIDIRECTIONAL_STREAMING="false")
    try:
        server.wait_ready()
        (pid,) = server.child_pids("tritonserver")
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        # Triton's gRPC stays off, as in NVIDIA's image, and the route is not there.
        assert b"--allow-grpc=false" in argv
        response = requests.get(f"{server.url}{ROUTE}", timeout=5)
        assert response.status_code == 404
        # Sessions on /invocations do not need it.
        opened = requests.post(
            f"{server.url}/invocations",
            json={"requestType": "NEW_SESSION"},
            headers={"X-Amzn-SageMaker-Session-Id": "NEW_SESSION"},
            timeout=10,
        )
        assert opened.status_code == 200
    finally:
        server.stop()


def test_sigterm_ends_open_streams_and_serve_exits_promptly(tmp_path: Path) -> None:
    server = start_sessions_server(tmp_path)
    try:
        server.wait_ready()

        async def stream_through_sigterm() -> int | None:
            async with connect(url(server, "speech_stream")) as ws:
                await ws.send(pcm(1, 2, 3))
                assert json.loads(await ws.recv())["chunk"] == 1
                server.terminate()  # SageMaker's stop: SIGTERM to serve
                await remaining(ws)
                return ws.close_code

        # The stream ends with 1001 (going away) instead of holding nginx's graceful stop.
        assert run(stream_through_sigterm()) == 1001
        # Within SageMaker's 30 s between SIGTERM and SIGKILL.
        stopping = time.monotonic()
        assert server.wait_exit(30) == 0
        assert time.monotonic() - stopping < 25, server.output[-3000:]
        assert "ending its sequence failed" not in server.output
        # No task of the stream server or of the sessions' expiry was left behind.
        assert "Task was destroyed but it is pending" not in server.output
    finally:
        server.stop()
