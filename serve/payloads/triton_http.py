"""An asyncio client for Triton's HTTP frontend on loopback, with kept-alive connections.

The payload service calls Triton once per adapted request, so this client is
as lean as asyncio allows: protocol callbacks instead of streams, a pool of
open connections, answers read by serve/payloads/http_parser.py. Triton on
loopback is the only server it talks to.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import AsyncGenerator, Mapping

from serve.errors import Unavailable
from serve.payloads.body import Body
from serve.payloads.flow import WriteFlow
from serve.payloads.http_parser import Head, MalformedMessage, ResponseReader

Item = bytes | BaseException | None


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    # Header names in lower case.
    headers: dict[str, str]
    body: bytes


class _Chunks:
    """A streamed answer's chunks as they arrive, for one reader; None ends them.

    An asyncio.Queue read through wait_for would cost a task per chunk before
    Python 3.12 (a turn of the event loop each); this costs a future only when
    the reader has to wait, and a timer.
    """

    def __init__(self) -> None:
        self._items: collections.deque[Item] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: Item) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self, timeout: float) -> Item:
        """The next item; TimeoutError when none comes within `timeout` seconds."""
        if not self._items:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(timeout, _expire, waiter, timeout)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self._items.popleft()


def _expire(waiter: asyncio.Future[None], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"Triton sent nothing more for {timeout:.0f} s"))


@dataclasses.dataclass
class Stream:
    """An answer whose body is read as it arrives (Triton's server-sent events)."""

    status: int
    headers: dict[str, str]
    chunks: AsyncGenerator[bytes, None]


class _Connection(WriteFlow):
    """One connection to Triton, carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.received_any = False
        self._reader = ResponseReader(self)
        self._head: tuple[int, dict[str, str]] | None = None
        self._body: list[bytes] = []
        self._answer: asyncio.Future[Reply] | None = None
        # Streaming: the head arrives first, then chunks (None ends them).
        self._stream_head: asyncio.Future[tuple[int, dict[str, str]]] | None = None
        self._chunks: _Chunks | None = None
        self.reusable = False

    # -- asyncio.Protocol ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.resume_writing()
        error = ConnectionError("Triton closed the connection")
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)
        if self._stream_head is not None and not self._stream_head.done():
            self._stream_head.set_exception(error)
        if self._chunks is not None and self._head is not None:
            self._chunks.put(error)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self._reader.feed(data)
        except MalformedMessage as exc:
            self._fail(ConnectionError(f"unreadable answer from Triton: {exc}"))

    # -- requests ---------------------------------------------------------

    def send(self, request: bytes, streaming: bool) -> None:
        loop = asyncio.get_running_loop()
        self._head = None
        self._body = []
        self.received_any = False
        self.reusable = False
        if streaming:
            self._stream_head = loop.create_future()
            self._chunks = _Chunks()
        else:
            self._answer = loop.create_future()
        assert self.transport is not None
        self.transport.write(request)

    async def send_body(self, body: Body) -> None:
        """Write a spooled body after its head, piece by piece, as the socket takes it."""
        async for piece in body.pieces():
            if self.closed or self.transport is None:
                return  # Triton answered or went away; the answer says which
            self.transport.write(piece)
            await self.drained()

    def abort(self) -> None:
        self._fail(TimeoutError("Triton did not answer in time"))
        if self.transport is not None:
            self.transport.abort()

    def discard(self) -> None:
        """Close a connection whose answer nobody will read, so it is never reused."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: BaseException) -> None:
        for future in (self._answer, self._stream_head):
            if future is not None and not future.done():
                future.set_exception(error)
        if self._chunks is not None:
            self._chunks.put(error)
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- the parser's callbacks (serve/payloads/http_parser.py) ----------------

    def message_head(self, head: Head) -> None:
        self._head = (head.status, head.headers)
        if self._stream_head is not None and not self._stream_head.done():
            self._stream_head.set_result(self._head)

    def message_body(self, data: bytes) -> None:
        self._deliver(data)

    def message_end(self, keep_alive: bool) -> None:
        self._finish(reusable=keep_alive)

    def _deliver(self, chunk: bytes) -> None:
        if self._chunks is not None:
            self._chunks.put(chunk)
        else:
            self._body.append(chunk)

    def _finish(self, reusable: bool) -> None:
        self.reusable = reusable
        if self._chunks is not None:
            self._chunks.put(None)
            self._chunks = None
            self._stream_head = None
            return
        assert self._head is not None and self._answer is not None
        status, headers = self._head
        answer, self._answer = self._answer, None
        if not answer.done():
            answer.set_result(Reply(status, headers, b"".join(self._body)))


class TritonHttp:
    """Triton's HTTP frontend for the payload service.

    `timeout` (SAGEMAKER_MODEL_SERVER_TIMEOUT) bounds the wait for an answer, or
    for a stream's next chunk. A request cancelled while it waits (its caller
    went away) closes its connection: the answer would arrive on it later.
    """

    def __init__(self, port: int, timeout: float = 3600.0, keep: int = 128):
        self.port = port
        self.timeout = timeout
        self._keep = keep
        self._idle: list[_Connection] = []

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | Body = b"",
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        message = _Message(method, path, body, headers)
        connection, reused = await self._connection()
        try:
            try:
                reply = await self._exchange(connection, message)
            except ConnectionError:
                if not (reused and not connection.received_any):
                    raise _unavailable() from None
                # Triton closed a kept-alive connection before reading the request.
                connection, _ = await self._connection(fresh=True)
                try:
                    reply = await self._exchange(connection, message)
                except ConnectionError:
                    raise _unavailable() from None
        except asyncio.CancelledError:
            connection.discard()
            raise
        self._release(connection)
        return reply

    async def _exchange(self, connection: _Connection, message: _Message) -> Reply:
        connection.send(message.head, streaming=False)
        answer = connection._answer
        assert answer is not None
        timer = asyncio.get_running_loop().call_later(self.timeout, connection.abort)
        try:
            if message.spooled is not None:
                await connection.send_body(message.spooled)
            return await answer
        finally:
            timer.cancel()

    async def stream(
        self, method: str, path: str, body: bytes | Body, headers: Mapping[str, str] | None = None
    ) -> Stream:
        """Send a request and return as soon as the answer's head is in."""
        message = _Message(method, path, body, headers)
        connection, reused = await self._connection()
        try:
            try:
                status, reply_headers, arriving = await self._stream_head(connection, message)
            except ConnectionError:
                if not (reused and not connection.received_any):
                    raise _unavailable() from None
                # Triton closed a kept-alive connection before reading the request.
                connection, _ = await self._connection(fresh=True)
                try:
                    status, reply_headers, arriving = await self._stream_head(connection, message)
                except ConnectionError:
                    raise _unavailable() from None
        except asyncio.CancelledError:
            connection.discard()
            raise

        async def chunks() -> AsyncGenerator[bytes, None]:
            finished = False
            try:
                while True:
                    # Each response of a decoupled model may take its time: the
                    # timeout bounds the wait for the next one, not the whole answer.
                    item = await arriving.get(self.timeout)
                    if item is None:
                        finished = True
                        return
                    if isinstance(item, ConnectionError):
                        raise _unavailable() from item
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                if finished:
                    self._release(connection)
                else:  # the caller left early: closing the connection ends Triton's request
                    connection.discard()

        return Stream(status, reply_headers, chunks())

    async def _stream_head(
        self, connection: _Connection, message: _Message
    ) -> tuple[int, dict[str, str], _Chunks]:
        """The answer's status and headers, and where its chunks arrive."""
        connection.send(message.head, streaming=True)
        head, arriving = connection._stream_head, connection._chunks
        assert head is not None and arriving is not None
        timer = asyncio.get_running_loop().call_later(self.timeout, connection.abort)
        try:
            if message.spooled is not None:
                await connection.send_body(message.spooled)
            status, headers = await head
        finally:
            timer.cancel()
        return status, headers, arriving

    async def _connection(self, fresh: bool = False) -> tuple[_Connection, bool]:
        while self._idle and not fresh:
            connection = self._idle.pop()
            if not connection.closed:
                return connection, True
        try:
            _, connection = await asyncio.get_running_loop().create_connection(
                _Connection, "127.0.0.1", self.port
            )
        except OSError as exc:
            raise _unavailable() from exc
        return connection, False

    def _release(self, connection: _Connection) -> None:
        if connection.reusable and not connection.closed and len(self._idle) < self._keep:
            self._idle.append(connection)
        elif connection.transport is not None:
            connection.closed = True
            connection.transport.close()

    def close(self) -> None:
        while self._idle:
            connection = self._idle.pop()
            if connection.transport is not None:
                connection.transport.close()


class _Message:
    """A request as written: its head with the body when in memory, and a spooled body after."""

    def __init__(
        self, method: str, path: str, body: bytes | Body, headers: Mapping[str, str] | None
    ):
        lines = [f"{method} {path} HTTP/1.1", "Host: triton", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.spooled: Body | None = None
        if isinstance(body, Body) and not body.in_memory:
            self.head, self.spooled = head, body
        else:
            self.head = head + (body.read() if isinstance(body, Body) else body)


def _unavailable() -> Unavailable:
    return Unavailable("the model server is not available; see the container log")
