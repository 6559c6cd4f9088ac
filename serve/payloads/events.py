"""Server-sent events as Triton's generate_stream route writes them, read as they arrive.

Triton writes one event per model response (`data: {...}` and a blank line);
an HTTP chunk may hold several events, or part of one. The adapter relays
them as JSON Lines, the text-generation schemas (serve/payloads/llm/) read each
response's outputs from them.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator


def event_data(event: bytes) -> bytes:
    """What one server-sent event carries: its `data:` lines, joined."""
    return b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))


async def events(chunks: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """The events of a stream, each whole, as they complete; closing this closes `chunks`
    (a caller who left early ends Triton's request at once)."""
    pending = b""
    try:
        async for chunk in chunks:
            pending += chunk
            *complete, pending = pending.split(b"\n\n")
            for event in complete:
                yield event
        if pending.strip():
            yield pending
    finally:
        await chunks.aclose()
