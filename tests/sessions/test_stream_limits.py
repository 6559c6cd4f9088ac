"""Bidirectional streams are bounded: how many, how much each buffers, how long one idles.

Each limit is a setting, and a stream past one is closed with a WebSocket
close code and a reason naming it: 1013 (try again later) past
SERVE_MAX_STREAMS, 1009 (message too big) past SERVE_STREAM_BUFFER_BYTES,
1008 after SERVE_STREAM_IDLE_SECONDS without a message either way. A large
text chunk is parsed in slices, so other streams keep being answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import ServeProcess
from tests.sessions.conftest import start_sessions_server
from tests.sessions.test_bidirectional import pcm, remaining, run, streams_balanced, url

BUFFER_BYTES = 65536


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    server = start_sessions_server(
        tmp_path_factory.mktemp("limited"),
        SERVE_MAX_STREAMS="2",
        SERVE_STREAM_BUFFER_BYTES=str(BUFFER_BYTES),
        SERVE_STREAM_IDLE_SECONDS="2",
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def test_a_stream_past_the_cap_is_closed_with_1013(limited_server: ServeProcess) -> None:
    async def talk() -> None:
        async with (
            connect(url(limited_server, "speech_stream")) as first,
            connect(url(limited_server, "speech_stream")) as second,
        ):
            for ws in (first, second):
                await ws.send(pcm(1, 2))
                assert json.loads(await ws.recv())["chunk"] == 1
            async with connect(url(limited_server, "speech_stream")) as third:
                messages = await remaining(third)
                assert third.close_code == 1013
                assert "SERVE_MAX_STREAMS" in (third.close_reason or "")
                assert "SERVE_MAX_STREAMS" in json.loads(messages[-1])["error"]
            # The two open ones carry on.
            await first.send(pcm(3))
            assert json.loads(await first.recv())["chunk"] == 2
        # Closed: the slots are free again, once the server has ended their sequences.
        answer: dict = {}
        for _attempt in range(50):
            async with connect(url(limited_server, "speech_stream")) as again:
                with contextlib.suppress(ConnectionClosed):
                    await again.send(pcm(1))
                    answer = json.loads(await again.recv())
            if again.close_code != 1013 and "error" not in answer:
                break
            await asyncio.sleep(0.2)
        assert answer["chunk"] == 1

    run(talk())


def test_a_message_over_the_buffer_is_closed_with_1009(limited_server: ServeProcess) -> None:
    async def talk() -> None:
        async with connect(url(limited_server, "speech_stream"), max_size=None) as ws:
            await ws.send(pcm(*([5] * (BUFFER_BYTES // 2))))  # exactly the buffer: taken
            assert json.loads(await ws.recv())["samples"] == BUFFER_BYTES // 2
            await ws.send(pcm(*([5] * (BUFFER_BYTES // 2 + 1))))
            await remaining(ws)
            assert ws.close_code == 1009
            assert "SERVE_STREAM_BUFFER_BYTES" in (ws.close_reason or "")

    run(talk())
    limited_server.wait_until(lambda: streams_balanced(limited_server), 10, "streams to end")


def test_an_idle_stream_is_closed_with_1008_and_its_state_released(
    limited_server: ServeProcess,
) -> None:
    async def talk() -> float:
        async with connect(url(limited_server, "slow_stream")) as ws:
            await ws.send("0")
            assert await ws.recv() == "done 0"
            silent = time.monotonic()
            # Only pings (the client library's and the server's) from here on.
            messages = await asyncio.wait_for(remaining(ws), 30)
            assert ws.close_code == 1008
            assert "SERVE_STREAM_IDLE_SECONDS" in (ws.close_reason or "")
            assert "SERVE_STREAM_IDLE_SECONDS" in json.loads(messages[-1])["error"]
            return time.monotonic() - silent

    before = limited_server.output.count("slow_stream: END")
    assert 1.5 < run(talk()) < 15  # type: ignore[operator]
    # The stream's sequence was ended in Triton: the model let go of its state.
    limited_server.wait_until(
        lambda: limited_server.output.count("slow_stream: END") > before, 15, "the stream's END"
    )
    assert "ended: idle" in limited_server.output


def test_a_large_text_chunk_does_not_stall_other_streams(tmp_path: Path) -> None:
    """Every stream shares one event loop: a text chunk is parsed a slice at a time."""
    server = start_sessions_server(tmp_path, SERVE_STREAM_BUFFER_BYTES=str(16 * 1024 * 1024))
    try:
        server.wait_ready()
        count = 7_000_000
        big = "[" + ",".join(["1"] * count) + "]"  # 14 MB of JSON numbers

        async def talk() -> tuple[float, float]:
            async with (
                connect(url(server, "speech_stream"), max_size=None) as heavy,
                connect(url(server), max_size=None) as light,
            ):
                await light.send("warm")
                await light.recv()
                sent = time.monotonic()
                await heavy.send(big)
                worst = 0.0
                answer = asyncio.ensure_future(heavy.recv())
                while not answer.done():
                    started = time.monotonic()
                    await light.send("ping")
                    await asyncio.wait_for(light.recv(), 30)
                    worst = max(worst, time.monotonic() - started)
                took = time.monotonic() - sent
                assert json.loads(answer.result()).get("samples") == count, answer.result()[:300]
                return worst, took

        worst, took = cast(tuple[float, float], run(talk()))
        # Against the chunk's own time, which a busy machine stretches alike: parsed whole
        # on the loop, the other stream waited 0.85-0.88 of it (0.60 s of 0.70 here); a
        # slice at a time, 0.12 of it (0.13 s of 1.07).
        assert worst < took / 3, (worst, took)
    finally:
        server.stop()


def test_stream_limits_are_settings_with_defaults() -> None:
    from serve.settings import Settings

    settings = Settings.from_environ({})
    assert settings.max_streams == 256
    assert settings.stream_buffer_bytes == 1024 * 1024
    assert settings.stream_idle_seconds == 300.0
