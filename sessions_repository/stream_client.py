"""Stream a second of (synthetic) 16 kHz audio to speech_stream and print each answer.

Run `make serve-sessions` first. The WebSocket is the one SageMaker's
InvokeEndpointWithBidirectionalStream opens to the container; an empty message
ends the input, and the model's final answer follows.
"""

from __future__ import annotations

import asyncio
import math
import struct
import sys

from websockets.asyncio.client import connect

RATE = 16000
CHUNK = 1600  # 100 ms of audio


async def main(port: int) -> None:
    url = f"ws://localhost:{port}/invocations-bidirectional-stream?target_model=speech_stream"
    async with connect(url) as ws:
        for start in range(0, RATE, CHUNK):
            samples = [
                int(8000 * math.sin(2 * math.pi * 440 * (start + i) / RATE)) for i in range(CHUNK)
            ]
            await ws.send(struct.pack(f"<{CHUNK}h", *samples))
            print(await ws.recv())
        await ws.send(b"")
        async for answer in ws:
            print(answer)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8080))
