"""An asyncio server on a unix socket, in a thread of `serve`'s own.

The payload service and the bidirectional stream server each run their event
loop in a daemon thread: `start` returns once the socket listens (or raises
what stopped it), `stop` closes what the server opened, in its own loop, and
ends the thread within a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

from serve.machine.sockets import restrict_socket

# How long `stop` waits for the server's own clean-up, then for its thread.
CLOSE_SECONDS = 10.0
JOIN_SECONDS = 5.0


class LoopThread:
    """Subclasses open their server in `_open` and close it in `_close`, both in the loop."""

    def __init__(self, socket_path: Path, name: str, loop: asyncio.AbstractEventLoop):
        self.socket_path = socket_path
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = threading.Event()
        self._failure: BaseException | None = None

    def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        closing = asyncio.run_coroutine_threadsafe(self._close(), self._loop)
        with contextlib.suppress(Exception):
            closing.result(timeout=CLOSE_SECONDS)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=JOIN_SECONDS)

    async def _open(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._open())
            # nginx's unprivileged workers connect to this socket, and no one else.
            restrict_socket(self.socket_path)
        except BaseException as exc:
            self._failure = exc
            self._started.set()
            return
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()
