"""The payload service: the adapters behind nginx, on a unix socket of the front's.

Only nginx talks to this server, over kept-alive upstream connections; its
requests are read by serve/payloads/http_parser.py. It is an asyncio server in
a thread of `serve`, on uvloop's event loop, written with protocol callbacks
rather than streams (fewer wake-ups a request): a request that waits on Triton holds no thread,
so as many requests as nginx sends are in Triton at once and its dynamic
batcher can batch them. (The Flask control app under waitress reached about a quarter of
the native throughput on the NCF example here; this reaches more than half,
build/bench/payloads.py.) Every error is JSON.

Routes:
- `POST /_serve/invocations`: an invocation, the model in X-Serve-Model and
  Triton's route in X-Serve-Inference (infer, generate, generate_stream);
- `POST /models/NAME/invoke` (multi-model endpoints): names nginx does not
  route itself (percent-encoded in the path);
- `POST /v2/models/NAME/infer` (the v2 JSON writers, serve/payloads/writers.py):
  Triton's own route, for nginx's upstream that holds Triton and the writers.

An invocation with X-Amzn-SageMaker-Session-Id goes through the stateful
sessions of serve/sessions/ (single-model endpoints).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import http
import json
import logging
import re
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote

import uvloop

from serve.errors import (
    EMPTY_BODY,
    ENCODED_BODY,
    POST_ONLY,
    SESSIONS_SINGLE_MODEL,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    ServeError,
    UnsupportedMediaType,
    invocation_timed_out,
)
from serve.multi_model.registry import ModelRegistry
from serve.payloads.adapter import Invocation, PayloadAdapter, Reply
from serve.payloads.body import Body, Spool
from serve.payloads.flow import WriteFlow
from serve.payloads.http_parser import Head, HeadTooLarge, MalformedMessage, RequestReader
from serve.payloads.limits import PayloadLimits
from serve.payloads.llm.generate import TextModel
from serve.payloads.loop_thread import LoopThread
from serve.payloads.triton_http import TritonHttp
from serve.sagemaker.contract import (
    HEADER_NAME,
    HEADER_VALUE,
    IDENTITY_ENCODING,
    SESSION_HEADER,
    full_match,
)

log = logging.getLogger(__name__)

MODEL_HEADER = "x-serve-model"
INFERENCE_HEADER = "x-serve-inference"
INVOCATIONS = "/_serve/invocations"
IDENTITY = full_match(IDENTITY_ENCODING, re.IGNORECASE)
# Answers from this size go out beside their head rather than copied after it.
UNCOPIED_ANSWER_BYTES = 1024 * 1024
# As nginx's own listen backlog (serve/front/templates/nginx.conf.j2).
LISTEN_BACKLOG = 4096


class SessionHandler(Protocol):
    """Stateful sessions on /invocations (serve/sessions/invocations.py), in the service's loop."""

    async def invoke(self, session_id: str, invocation: Invocation) -> Reply: ...

    async def refuse_held_sequence(self, invocation: Invocation) -> None: ...

    async def start_expiry(self) -> None: ...

    async def close(self) -> None: ...


# Makes the service's session handler around its adapter, in the service's own thread.
SessionHandlers = Callable[[PayloadAdapter], SessionHandler]


class PayloadService(LoopThread):
    def __init__(
        self,
        socket_path: Path,
        triton_port: int,
        spool: Spool,
        registry: ModelRegistry | None = None,
        timeout: float = 3600.0,
        sessions: SessionHandlers | None = None,
        listener: socket.socket | None = None,
        text_models: Mapping[str, TextModel] | None = None,
        max_tokens: int = 256,
        limits: PayloadLimits | None = None,
    ):
        """`timeout`: how long an invocation may wait on Triton (SAGEMAKER_MODEL_SERVER_TIMEOUT).

        `limits`: SERVE_MAX_RECORDS and the like (serve/payloads/limits.py).

        `spool`: where bodies past SERVE_BODY_BUFFER_BYTES are written (serve/payloads/body.py).
        `listener`: a socket already listening at `socket_path` (writers.py's processes).
        `text_models`, `max_tokens`: the declared text-generation models (serve/payloads/llm/).
        """
        # uvloop's loop runs the callbacks in C: the service's share of the time to a
        # first streamed chunk fell by a quarter to a half against asyncio's own loop
        # (two same-process A/B runs), and by 0.1 ms through serve on an H200 host.
        super().__init__(socket_path, "payloads", uvloop.new_event_loop())
        self._triton_port = triton_port
        self._spool = spool
        self._registry = registry
        self._timeout = timeout
        # Stateful sessions (serve/sessions/invocations.py): None on multi-model endpoints.
        self._session_handlers = sessions
        self._listener = listener
        self._text_models = text_models
        self._max_tokens = max_tokens
        self._limits = limits
        self._adapter: PayloadAdapter | None = None
        self._sessions: SessionHandler | None = None
        self._server: asyncio.AbstractServer | None = None

    async def _open(self) -> None:
        adapter = self._adapter = PayloadAdapter(
            TritonHttp(self._triton_port, self._timeout),
            self._registry,
            self._text_models,
            self._max_tokens,
            self._limits,
        )
        sessions = None
        if self._session_handlers is not None:
            sessions = self._sessions = self._session_handlers(adapter)
            await sessions.start_expiry()

        def connection() -> _NginxConnection:
            return _NginxConnection(adapter, self._registry, self._spool, sessions)

        if self._listener is not None:
            self._server = await self._loop.create_unix_server(connection, sock=self._listener)
            return
        self._server = await self._loop.create_unix_server(
            connection,
            path=str(self.socket_path),
            # nginx opens a connection per concurrent request (streams hold theirs):
            # asyncio's default backlog of 100 refused some of 256 streams at once.
            backlog=LISTEN_BACKLOG,
        )

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._sessions is not None:
            await self._sessions.close()
        if self._adapter is not None:
            self._adapter.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


class _NginxConnection(WriteFlow):
    """One kept-alive connection from nginx: requests in, one at a time, answers out.

    nginx closes the connection when its caller goes away; the request in flight
    is then cancelled, which lets go of its body and of its connection to Triton
    at once (Triton finishes the model's work; nobody reads the answer). Other
    requests, on other connections, are not touched.
    """

    def __init__(
        self,
        adapter: PayloadAdapter,
        registry: ModelRegistry | None,
        spool: Spool,
        sessions: SessionHandler | None = None,
    ):
        self._adapter = adapter
        self._sessions = sessions
        self._registry = registry
        self._spool = spool
        self._transport: asyncio.Transport | None = None
        self._reader = RequestReader(self)
        # The request whose body is arriving (in `_parts`, or its spool file).
        self._incoming: _Request | None = None
        self._parts: list[bytes] = []
        # Requests read whole, waiting for the one in flight to be answered.
        self._ready: collections.deque[_Request] = collections.deque()
        self._busy = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.resume_writing()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        for request in (self._incoming, *self._ready):
            if request is not None:
                request.body.close()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            self._reader.feed(data)
        except MalformedMessage as exc:
            too_large = isinstance(exc, HeadTooLarge)
            status, message = (431, "request head too large") if too_large else (400, None)
            if not self._busy:
                self._write(
                    Reply(status, "application/json", _error(message or f"bad request: {exc}"))
                )
            self._close()
            return
        self._next()

    # -- the parser's callbacks (serve/payloads/http_parser.py) ----------------

    def message_head(self, head: Head) -> None:
        # A body of a Content-Length past the spool's threshold goes to a file as it arrives.
        spooled = self._spool.body(head.content_length or 0)
        self._incoming = _Request(head.method, head.target, head.headers, spooled or Body())
        self._parts = []

    def message_body(self, data: bytes) -> None:
        assert self._incoming is not None
        if self._incoming.body.in_memory:
            self._parts.append(data)
        else:
            self._incoming.body.write(data)

    def message_end(self, keep_alive: bool) -> None:
        request, self._incoming = self._incoming, None
        assert request is not None
        if request.body.in_memory:
            request = dataclasses.replace(request, body=Body(b"".join(self._parts)))
        self._parts = []
        self._ready.append(request)

    def _next(self) -> None:
        # nginx sends a connection's next request only once it has the last answer;
        # one that came earlier waits its turn.
        if self._busy or self._closed or not self._ready:
            return
        self._start(self._ready.popleft())

    def _start(self, request: _Request) -> None:
        self._busy = True
        self._task = asyncio.get_running_loop().create_task(self._serve(request))

    async def _serve(self, request: _Request) -> None:
        try:
            reply = _checked_head(await self._answer(request))
            if reply.chunks is None:
                self._write(reply)
            else:
                await self._write_stream(reply)
        except asyncio.CancelledError:
            return  # nginx's caller went away (connection_lost): nothing is left to answer
        finally:
            request.body.close()
        self._busy = False
        self._next()

    async def _answer(self, request: _Request) -> Reply:
        try:
            invocation = self._invocation(request)
            # --- sessions: X-Amzn-SageMaker-Session-Id on /invocations (serve/sessions/)
            session = request.headers.get(SESSION_HEADER.lower())
            if session is not None:
                if self._sessions is None:
                    raise BadRequest(SESSIONS_SINGLE_MODEL)
                return await self._sessions.invoke(session, invocation)
            if self._sessions is not None:
                await self._sessions.refuse_held_sequence(invocation)
            # --- end sessions
            return await self._adapter.invoke(invocation)
        except ServeError as exc:
            return Reply(exc.status, "application/json", exc.body or _error(exc.message))
        except (asyncio.TimeoutError, TimeoutError):
            message = invocation_timed_out(self._adapter.triton.timeout)
            return Reply(504, "application/json", _error(message))
        except Exception as exc:
            log.exception("unexpected error adapting a payload")
            return Reply(
                500, "application/json", _error(f"internal error in serve: {type(exc).__name__}")
            )

    def _invocation(self, request: _Request) -> Invocation:
        method, headers, body = request.method, request.headers, request.body
        path = request.target.split("?", 1)[0]
        if path == INVOCATIONS and MODEL_HEADER in headers:
            # Percent-encoded by nginx's config (names of any characters travel safely).
            model = unquote(headers[MODEL_HEADER])
        elif (
            self._registry is not None and path.startswith("/models/") and path.endswith("/invoke")
        ):
            model = unquote(path[len("/models/") : -len("/invoke")])
        else:
            raise NotFound("no such route")
        if method != "POST":
            raise MethodNotAllowed(POST_ONLY)
        if not body:
            raise BadRequest(EMPTY_BODY)
        if not IDENTITY.match(headers.get("content-encoding", "")):
            raise UnsupportedMediaType(ENCODED_BODY)
        return Invocation(
            model=model,
            inference=headers.get(INFERENCE_HEADER, "infer"),
            content_type=headers.get("content-type", ""),
            accept=headers.get("accept", ""),
            body=body,
        )

    def _write(self, reply: Reply) -> None:
        if self._closed or self._transport is None:
            return
        extra = "".join(f"{name}: {value}\r\n" for name, value in reply.headers)
        head = (
            f"HTTP/1.1 {reply.status} {_phrase(reply.status)}\r\n"
            f"Content-Type: {reply.content_type}\r\n{extra}"
            f"Content-Length: {len(reply.body)}\r\n\r\n"
        ).encode("latin-1")
        if len(reply.body) < UNCOPIED_ANSWER_BYTES:
            self._transport.write(head + reply.body)
        else:
            # A large answer (batch transform's) is not copied to put its head before it.
            self._transport.writelines((head, reply.body))

    async def _write_stream(self, reply: Reply) -> None:
        assert reply.chunks is not None and self._transport is not None
        # The head goes out with the first chunk, in one write: one wake-up of
        # nginx, and of the caller, instead of two.
        unsent = (
            f"HTTP/1.1 {reply.status} {_phrase(reply.status)}\r\n"
            f"Content-Type: {reply.content_type}\r\n"
            "Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n"
            # nginx passes each chunk on as it comes instead of buffering the answer.
            "X-Accel-Buffering: no\r\n\r\n"
        ).encode("latin-1")
        try:
            async for chunk in reply.chunks:
                if self._closed:
                    return  # the caller went away; closing the chunks ends Triton's request
                if chunk:
                    self._transport.write(unsent + b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    unsent = b""
                await self.drained()
        except Exception as exc:
            # The answer has started: all that is left is to say so in the stream and end it.
            log.warning("stream ended early: %s", exc)
            message = getattr(exc, "message", None) or f"the stream failed: {exc}"
            line = json.dumps({"error": message}).encode() + b"\n"
            self._transport.write(unsent + b"%x\r\n%s\r\n" % (len(line), line))
            unsent = b""
        finally:
            with contextlib.suppress(Exception):
                await reply.chunks.aclose()  # type: ignore[attr-defined]
        self._transport.write(unsent + b"0\r\n\r\n")

    def _close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()


@dataclasses.dataclass(frozen=True)
class _Request:
    method: str
    target: str
    # Header names in lower case.
    headers: dict[str, str]
    # Complete, or a spooled body still arriving.
    body: Body


def _checked_head(reply: Reply) -> Reply:
    """The reply, or a 500 when a header it would write is not a header line.

    Values come from models (custom attributes) and from Triton (Content-Type);
    each is matched whole against HEADER_VALUE, so none can end its line, or
    the header block, early: nginx would read what follows as the body.
    """
    fields = (("Content-Type", reply.content_type), *reply.headers)
    for name, value in fields:
        if not (HEADER_NAME.match(name) and HEADER_VALUE.match(value)):
            log.error("an answer's header %s was %r, which is not a header value", name, value)
            return Reply(
                500,
                "application/json",
                _error(
                    f"internal error in serve: the answer's {name} header would have held "
                    f"{value[:60]!r}, which a header cannot carry; see the container log"
                ),
            )
    return reply


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
