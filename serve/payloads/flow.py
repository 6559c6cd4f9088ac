"""Write flow control for the payload service's asyncio protocols.

A transport whose buffer is full calls `pause_writing`; a writer that goes on
writing would hold whatever it sends in memory (a streamed answer, a spooled
body on its way to Triton). `drained` waits until the transport has room.
"""

from __future__ import annotations

import asyncio


class WriteFlow(asyncio.Protocol):
    """A protocol whose writers wait for `drained` while the transport's buffer is full."""

    _paused: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self._paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        """Also called when the connection is lost, so no writer waits forever."""
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)
        self._paused = None

    async def drained(self) -> None:
        if self._paused is not None:
            await self._paused
