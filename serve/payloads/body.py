"""Request bodies in the payload service: in memory up to a bound, on disk past it.

Asynchronous inference sends bodies up to 1 GB and batch transform up to
100 MB; held whole in memory, a few of them would exhaust the container.
Bodies up to SERVE_BODY_BUFFER_BYTES (real-time's 6 MB by default) stay in
memory, as before; larger ones are written, as they arrive, to a file without
a name in the workspace (removed by the kernel when closed, so nothing is left
behind however a request ends) and go on to Triton from there in pieces.

A body the service has to decode (CSV, JSON, JSON Lines, .npy, raw bytes for
a BYTES input) is read back whole at that point: its records become tensors
in memory anyway. Bodies that go to Triton as they were sent (KServe v2 JSON
or binary+json whose answer is re-encoded or whose model streams) never are.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

# Pieces a spooled body is read in on its way to Triton.
PIECE_BYTES = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Spool:
    """Bodies larger than `threshold` bytes (SERVE_BODY_BUFFER_BYTES) go to `folder`."""

    folder: Path
    threshold: int

    def body(self, size: int) -> Body | None:
        """An empty spooled body for `size` bytes to come; None when memory will do."""
        return Body.spooled(self.folder, size) if size > self.threshold else None


class Body:
    """One request's body: `data` in memory, or a spooled file of `size` bytes."""

    def __init__(self, data: bytes = b"", spool: BinaryIO | None = None, size: int = 0):
        self._data = data
        self._spool = spool
        self.size = size if spool is not None else len(data)
        self._written = 0

    @classmethod
    def spooled(cls, folder: Path, size: int) -> Body:
        """An empty body of `size` bytes to come, written under `folder` by `write`."""
        folder.mkdir(parents=True, exist_ok=True)
        return cls(spool=tempfile.TemporaryFile(dir=folder), size=size)

    @property
    def in_memory(self) -> bool:
        return self._spool is None

    @property
    def complete(self) -> bool:
        return self._spool is None or self._written == self.size

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append what arrived of a spooled body; returns how many bytes of `data` it took."""
        assert self._spool is not None
        taken = min(len(data), self.size - self._written)
        self._spool.write(data[:taken])
        self._written += taken
        if self.complete:
            self._spool.flush()
        return taken

    def read(self) -> bytes:
        """The whole body, in memory (read back from disk when spooled)."""
        if self._spool is None:
            return self._data
        return os.pread(self._spool.fileno(), self.size, 0)

    def head(self, count: int) -> bytes:
        """The first `count` bytes."""
        if self._spool is None:
            return self._data[:count]
        return os.pread(self._spool.fileno(), min(count, self.size), 0)

    async def pieces(self) -> AsyncIterator[bytes]:
        """The body in pieces of PIECE_BYTES, read off the event loop when spooled."""
        if self._spool is None:
            yield self._data
            return
        loop = asyncio.get_running_loop()
        fd = self._spool.fileno()
        for offset in range(0, self.size, PIECE_BYTES):
            yield await loop.run_in_executor(None, os.pread, fd, PIECE_BYTES, offset)

    def close(self) -> None:
        """Let go of a spooled body's file (its disk space is freed at once)."""
        if self._spool is not None:
            self._spool.close()

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0
