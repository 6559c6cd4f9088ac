"""Bidirectional streams: SageMaker's WebSocket route, bridged to Triton's gRPC streaming API.

SageMaker's InvokeEndpointWithBidirectionalStream reaches a container as a
WebSocket at `/invocations-bidirectional-stream` on its port (nginx passes the
upgrade to this server, on a unix socket of the front's). Each WebSocket is
one stream and its own session: one sequence of Triton's sequence batcher
(a correlation id of its own, START on its first chunk, END on its last), so
a decoupled, stateful model answers each chunk as it arrives, in order.

- Every message (text or binary) is one chunk, and fills the model's one
  record input (serve/payloads/signature.py): a BYTES input takes the message
  as it is; a numeric one takes a binary message as little-endian values of
  its type (16-bit PCM audio for an INT16 input), or a text message holding a
  JSON array of numbers.
- An empty message ends the input: the chunk sent with END is empty, its
  answers still come, and the server closes the stream (1000).
- Every model response is one message: a single BYTES value as text (binary
  when it is not UTF-8), anything else as a JSON object of the outputs.
- The model's error ends the stream: `{"error": ...}` is sent, then close
  code 1011. A message the model cannot take: the same with 1007.
- A client that stops reading for SERVE_STREAM_SEND_TIMEOUT seconds
  (backpressure) is closed with 1008; one that disappears (closed, reset, or
  silent to pings) simply ends. In every early end the Triton stream is
  cancelled (its requests in flight are cancelled in Triton) and the sequence
  is ended with an empty END chunk of its own, so the model lets go of the
  stream's state.

Limits, each a setting named in the close reason and the error message:
- SERVE_MAX_STREAMS streams at once; one more is closed with 1013 (try again
  later) before it takes a sequence;
- SERVE_STREAM_BUFFER_BYTES: the largest message (a larger one is closed
  with 1009, message too big), and the most a stream's chunks on their way to
  Triton may hold: when they do, this server stops reading and TCP pushes
  back on the client. The WebSocket library holds one message more, so a
  stream buffers about three times this at most;
- SERVE_STREAM_IDLE_SECONDS without a message either way (pings do not
  count): closed with 1008, its sequence ended like any early end.

Every stream shares one event loop: a text chunk over TEXT_SLICE_CHARS is
parsed a slice at a time, letting the others run in between. Pings are
answered with pongs (SageMaker pings every 60 s and closes the connection
after five go unanswered); this server pings too, to find clients that are
gone without a word.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import grpc
import numpy as np
from tritonclient.grpc import InferInput, InferResult
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException
from websockets.asyncio.server import Server, ServerConnection, unix_serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.server import ServerProtocol

from serve.payloads.loop_thread import LoopThread
from serve.payloads.records import cast_float, float_range
from serve.payloads.service import MODEL_HEADER
from serve.payloads.signature import ModelSignature, TensorSpec
from serve.sagemaker.contract import BIDIRECTIONAL_ROUTE as ROUTE
from serve.sessions.registry import SEQUENCE_IDS, SequenceIds
from serve.settings import Settings

log = logging.getLogger(__name__)
# The library logs every connection at INFO; the streams' own lines say more.
logging.getLogger("websockets.server").setLevel(logging.WARNING)

# Chunks on their way to Triton at most, per stream, before reading pauses (whatever
# their bytes: SERVE_STREAM_BUFFER_BYTES bounds those).
PENDING_CHUNKS = 16
# A text chunk longer than this is parsed a slice of about this many characters at a
# time, the loop free for other streams in between (about a millisecond a slice).
TEXT_SLICE_CHARS = 64 * 1024
# How long the END that releases a stream's state may take.
RELEASE_SECONDS = 30.0

Request = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class StreamLimits:
    """The settings that bound streams (serve/settings.py says what each means)."""

    send_timeout: float = 30.0
    max_streams: int = 256
    buffer_bytes: int = 1024 * 1024
    idle_seconds: float = 300.0

    @classmethod
    def of(cls, settings: Settings) -> StreamLimits:
        return cls(
            settings.stream_send_timeout,
            settings.max_streams,
            settings.stream_buffer_bytes,
            settings.stream_idle_seconds,
        )


class Ending(enum.Enum):
    """How a stream ended; `code` is the close code its client gets."""

    FINISHED = "finished"  # the client's empty message: every answer was sent
    CLIENT_GONE = "client gone"  # closed or vanished; nothing is sent
    BAD_INPUT = "bad input"
    BACKPRESSURE = "backpressure"
    IDLE = "idle"
    TOO_MANY = "too many streams"
    MODEL_ERROR = "model error"

    @property
    def code(self) -> int:
        return _CLOSE_CODES[self]


_CLOSE_CODES = {
    Ending.FINISHED: CloseCode.NORMAL_CLOSURE,  # 1000
    Ending.CLIENT_GONE: CloseCode.GOING_AWAY,  # 1001
    Ending.BAD_INPUT: CloseCode.INVALID_DATA,  # 1007
    Ending.BACKPRESSURE: CloseCode.POLICY_VIOLATION,  # 1008
    Ending.IDLE: CloseCode.POLICY_VIOLATION,  # 1008
    Ending.TOO_MANY: CloseCode.TRY_AGAIN_LATER,  # 1013
    Ending.MODEL_ERROR: CloseCode.INTERNAL_ERROR,  # 1011
}


class StreamError(Exception):
    """Ends a stream: `ending` says how, the message is sent to the client first."""

    def __init__(self, ending: Ending, message: str):
        super().__init__(message)
        self.ending = ending
        self.message = message


class BidirectionalServer(LoopThread):
    """The WebSocket server, in a thread of `serve` with an event loop of its own."""

    def __init__(
        self,
        socket_path: Path,
        grpc_port: int,
        limits: StreamLimits,
        ids: SequenceIds = SEQUENCE_IDS,
    ):
        super().__init__(socket_path, "bidirectional", asyncio.new_event_loop())
        self._grpc_url = f"127.0.0.1:{grpc_port}"
        self._limits = limits
        self._ids = ids
        self._server: Server | None = None
        self._client: InferenceServerClient | None = None
        # Model name -> its signature and whether it has a sequence batcher.
        self._models: dict[str, tuple[ModelSignature, bool]] = {}
        # The streams' tasks that outlive a handler (releases): awaited at stop.
        self._releases: set[asyncio.Task[None]] = set()
        self.open_streams = 0
        self._count = 0

    async def _open(self) -> None:
        self._client = InferenceServerClient(self._grpc_url)
        self._server = await unix_serve(
            self._stream,
            path=str(self.socket_path),
            max_size=self._limits.buffer_bytes,
            # One message waits in the library at most: the rest of a stream's buffer
            # is its chunks on their way to Triton (_ByteQueue).
            max_queue=1,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=2,
            create_connection=_Connection,
        )

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._releases:
            await asyncio.wait(self._releases, timeout=RELEASE_SECONDS)
        if self._client is not None:
            await self._client.close()

    # -- one stream -------------------------------------------------------

    async def _stream(self, connection: ServerConnection) -> None:
        request = connection.request
        assert request is not None
        target = urlsplit(request.path)
        # The model nginx picked and checked (the endpoint's, or target_model=NAME in the
        # query string or the custom attributes), percent-encoded; nothing else names it.
        model = unquote(request.headers.get(MODEL_HEADER, ""))
        if self.open_streams >= self._limits.max_streams:
            await _refuse(
                connection,
                StreamError(
                    Ending.TOO_MANY,
                    f"{self._limits.max_streams} streams are open on this instance "
                    "(SERVE_MAX_STREAMS); try again later",
                ),
            )
            return
        # Counted from here: the checks below wait on Triton, and other streams may come.
        self.open_streams += 1
        try:
            try:
                if target.path != ROUTE:
                    raise StreamError(Ending.BAD_INPUT, f"no such route; streams open at {ROUTE}")
                signature, sequenced = await self._model(model)
            except StreamError as exc:
                await _refuse(connection, exc)
                return
            sequence_id = self._ids.take() if sequenced else 0
            try:
                await self._run_stream(connection, model, signature, sequence_id)
            finally:
                if sequence_id:
                    self._ids.release(sequence_id)
        finally:
            self.open_streams -= 1

    async def _run_stream(
        self, connection: ServerConnection, model: str, signature: ModelSignature, sequence_id: int
    ) -> None:
        """One stream, from its first chunk to its sequence's end in Triton."""
        # Logs name a stream by its number here: its sequence id is not for every reader.
        self._count += 1
        number = self._count
        stream = _Stream(connection, model, signature, sequence_id, self._limits)
        log.info("stream %d opened on model %r", number, model)
        ending = await stream.run(self._client)
        log.info("stream %d ended: %s", number, ending.value)
        if ending is not Ending.FINISHED and stream.started and sequence_id:
            task = asyncio.get_running_loop().create_task(self._release(model, stream, number))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)
            await task

    async def _release(self, model: str, stream: _Stream, number: int) -> None:
        """End the stream's sequence in a Triton stream of its own: the model drops its state."""

        async def only_end() -> AsyncIterator[Request]:
            yield stream.end_request()

        assert self._client is not None
        responses = self._client.stream_infer(only_end())

        async def drain() -> None:
            async for _result, error in responses:
                if error is not None:
                    log.warning("stream %d: the END failed: %s", number, error)

        try:
            await asyncio.wait_for(drain(), RELEASE_SECONDS)
        except (TimeoutError, asyncio.TimeoutError, grpc.RpcError) as exc:
            log.warning("stream %d: ending its sequence failed: %s", number, exc)
            responses.cancel()

    async def _model(self, model: str) -> tuple[ModelSignature, bool]:
        known = self._models.get(model)
        if known is not None:
            return known
        assert self._client is not None
        try:
            config = await self._client.get_model_config(model, as_json=True)
        except InferenceServerException as exc:
            raise StreamError(
                Ending.BAD_INPUT, f"model {model!r} cannot stream: {exc.message()}"
            ) from exc
        document = config.get("config", config)
        signature = ModelSignature.from_triton_json(json.dumps(document))
        if len(signature.record_inputs) != 1:
            raise StreamError(
                Ending.BAD_INPUT,
                f"model {model!r} takes {signature.describe_inputs()}; a stream's chunks fill "
                "one input: pin it with SERVE_PAYLOAD_INPUTS in the model's config.pbtxt",
            )
        known = (signature, "sequence_batching" in document)
        self._models[model] = known
        return known


class _Connection(ServerConnection):
    """A stream's WebSocket, whose close for a message over the limit names the setting.

    The library closes the connection itself (1009) when a message is larger
    than `max_size`, with a reason of its own; the caller learns here which
    setting that is.
    """

    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        fail = protocol.fail
        limit = protocol.max_message_size

        def named(code: int, reason: str = "") -> None:
            if code == CloseCode.MESSAGE_TOO_BIG:
                reason = f"a message over {limit} bytes (SERVE_STREAM_BUFFER_BYTES)"
            fail(code, reason)

        protocol.fail = named  # type: ignore[method-assign]
        super().__init__(protocol, *args, **kwargs)


class _ByteQueue:
    """The chunks on their way to Triton: at most PENDING_CHUNKS, and `budget` bytes.

    One chunk is always let in, however large (the library bounded it by the
    same budget); `put` waits while the others hold the budget, and the
    reader with it, so TCP pushes back on the client.
    """

    def __init__(self, budget: int):
        self._budget = budget
        self._held = 0
        self._items: asyncio.Queue[tuple[Request | None, int]] = asyncio.Queue(PENDING_CHUNKS)
        self._freed = asyncio.Event()

    async def put(self, request: Request | None, size: int = 0) -> None:
        while self._held and self._held + size > self._budget:
            self._freed.clear()
            await self._freed.wait()
        self._held += size
        await self._items.put((request, size))

    async def get(self) -> Request | None:
        request, size = await self._items.get()
        self._held -= size
        self._freed.set()
        return request


class _Stream:
    """One WebSocket and the Triton stream behind it."""

    def __init__(
        self,
        connection: ServerConnection,
        model: str,
        signature: ModelSignature,
        sequence_id: int,
        limits: StreamLimits,
    ):
        self.connection = connection
        self.model = model
        self.signature = signature
        self.sequence_id = sequence_id
        self.started = False
        self._limits = limits
        self._requests = _ByteQueue(limits.buffer_bytes)
        # When the last message went either way (for SERVE_STREAM_IDLE_SECONDS).
        self._active = time.monotonic()

    async def run(self, client: InferenceServerClient) -> Ending:
        responses = client.stream_infer(self._outgoing())
        reader = asyncio.create_task(self._read())
        writer = asyncio.create_task(self._write(responses))
        watchdog = asyncio.create_task(self._watch_idle())
        try:
            done, _pending = await asyncio.wait(
                {reader, writer, watchdog}, return_when=asyncio.FIRST_COMPLETED
            )
            first = writer if writer in done else reader if reader in done else watchdog
            ending, message = _outcome(first)
            if first is reader and ending is Ending.FINISHED:
                # The client's input is over: every answer is still due.
                await asyncio.wait({writer})
                ending, message = _outcome(writer)
        finally:
            for task in (reader, writer, watchdog):
                task.cancel()
            await asyncio.gather(reader, writer, watchdog, return_exceptions=True)
        if ending is not Ending.FINISHED:
            responses.cancel()  # Triton cancels the stream's requests in flight
        await self._close(ending, message)
        return ending

    async def _close(self, ending: Ending, message: str | None) -> None:
        if ending is Ending.CLIENT_GONE:
            with contextlib.suppress(Exception):
                await self.connection.close()
            return
        if message is not None and ending is not Ending.BACKPRESSURE:
            # A client that stopped reading would not take it either.
            with contextlib.suppress(ConnectionClosed, TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(self.connection.send(json.dumps({"error": message})), 2)
        with contextlib.suppress(Exception):
            await self.connection.close(ending.code, _reason(message))

    async def _watch_idle(self) -> Ending:
        """Ends the stream once no message went either way for SERVE_STREAM_IDLE_SECONDS."""
        idle = self._limits.idle_seconds
        while (left := self._active + idle - time.monotonic()) > 0:
            await asyncio.sleep(left)
        raise StreamError(
            Ending.IDLE,
            f"no message either way for {idle:g} s (SERVE_STREAM_IDLE_SECONDS); "
            "open a new stream to go on",
        )

    async def _outgoing(self) -> AsyncIterator[Request]:
        while True:
            request = await self._requests.get()
            if request is None:
                return
            yield request

    async def _read(self) -> Ending:
        try:
            async for message in self.connection:
                self._active = time.monotonic()
                data = message.encode() if isinstance(message, str) else message
                if not data:
                    if self.sequence_id:  # a model without sequences has nothing to end
                        await self._requests.put(self.end_request())
                    await self._requests.put(None)
                    return Ending.FINISHED
                spec = self.signature.record_inputs[0]
                tensor = await _tensor(spec, message, self.signature.batched)
                await self._requests.put(self._request(tensor), len(data))
        except ConnectionClosed:
            pass
        return Ending.CLIENT_GONE

    async def _write(self, responses: Any) -> Ending:
        send_timeout = self._limits.send_timeout
        try:
            async for result, error in responses:
                if error is not None:
                    raise StreamError(Ending.MODEL_ERROR, error.message())
                frame = _frame(result, self.signature)
                try:
                    await asyncio.wait_for(self.connection.send(frame), send_timeout)
                except (TimeoutError, asyncio.TimeoutError):
                    raise StreamError(
                        Ending.BACKPRESSURE,
                        f"the client took no output for {send_timeout:g} s "
                        "(SERVE_STREAM_SEND_TIMEOUT)",
                    ) from None
                self._active = time.monotonic()
        except ConnectionClosed:
            return Ending.CLIENT_GONE
        except grpc.RpcError as exc:
            raise StreamError(
                Ending.MODEL_ERROR, f"the model server ended the stream: {exc}"
            ) from exc
        return Ending.FINISHED

    def _request(self, tensor: InferInput, end: bool = False) -> Request:
        request: Request = {"model_name": self.model, "inputs": [tensor]}
        if self.sequence_id:
            request.update(
                sequence_id=self.sequence_id, sequence_start=not self.started, sequence_end=end
            )
        self.started = True
        return request

    def end_request(self) -> Request:
        """The last chunk: every required input empty (or zero), with END set."""
        inputs = []
        for spec in self.signature.inputs:
            if spec.optional:
                continue
            dims = [0 if dim < 0 else dim for dim in spec.dims]
            shape = [1, *dims] if self.signature.batched else dims
            array = np.zeros(shape, dtype=spec.dtype)
            if spec.is_bytes:
                array = np.full(shape, b"", dtype=object)
            tensor = InferInput(spec.name, shape, spec.datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        request: Request = {"model_name": self.model, "inputs": inputs}
        if self.sequence_id:
            request.update(
                sequence_id=self.sequence_id, sequence_start=not self.started, sequence_end=True
            )
        return request


async def _tensor(spec: TensorSpec, message: str | bytes, batched: bool) -> InferInput:
    """One chunk as the input it fills (see the module's docstring)."""
    if spec.is_bytes:
        values = np.array([message.encode() if isinstance(message, str) else message], dtype=object)
    elif isinstance(message, bytes):
        dtype = spec.dtype.newbyteorder("<")
        if len(message) % dtype.itemsize:
            raise StreamError(
                Ending.BAD_INPUT,
                f"a binary chunk for input {spec.describe()} holds whole {spec.datatype} "
                f"values of {dtype.itemsize} bytes; this one has {len(message)} bytes",
            )
        values = np.frombuffer(message, dtype=dtype).astype(spec.dtype)
    else:
        values = await _numbers(spec, message)
    if spec.fixed_size is not None:
        if values.size != spec.fixed_size:
            raise StreamError(
                Ending.BAD_INPUT,
                f"input {spec.describe()} takes {spec.fixed_size} values a chunk; "
                f"this one has {values.size}",
            )
        shape = list(spec.dims)
    else:
        known = int(np.prod([d for d in spec.dims if d > 0])) if spec.dims else 1
        shape = [values.size // known if d < 0 else d for d in spec.dims] or [1]
    if batched:
        shape = [1, *shape]
    tensor = InferInput(spec.name, shape, spec.datatype)
    tensor.set_data_from_numpy(values.reshape(shape))
    return tensor


async def _numbers(spec: TensorSpec, text: str) -> np.ndarray:
    """A text chunk's JSON array of numbers, as values of the input's type.

    Past TEXT_SLICE_CHARS the array must be flat, and is read a slice at a time
    (cut at commas, which no JSON number holds), yielding to the loop between
    slices: one client's large chunk costs every other stream at most a slice.
    """
    try:
        if len(text) <= TEXT_SLICE_CHARS:
            return _of_type(json.loads(text), spec.dtype)
        inner = text.strip()
        if not (inner[:1] == "[" and inner[-1:] == "]" and inner.count("[") == 1):
            raise ValueError(
                f"one over {TEXT_SLICE_CHARS} characters must be a flat array (or send "
                "the values in a binary chunk)"
            )
        body = inner[1:-1]
        pieces = []
        start = 0
        while True:
            cut = body.find(",", start + TEXT_SLICE_CHARS)
            end = len(body) if cut < 0 else cut
            pieces.append(_of_type(json.loads(f"[{body[start:end]}]"), spec.dtype))
            await asyncio.sleep(0)
            if cut < 0:
                return np.concatenate(pieces)
            start = cut + 1
            if not body[start:].strip():
                raise ValueError("a comma ends the array")
    except (json.JSONDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise StreamError(
            Ending.BAD_INPUT,
            f"a text chunk for input {spec.describe()} is a JSON array of numbers: {exc}",
        ) from exc


def _of_type(values: object, dtype: np.dtype) -> np.ndarray:
    """JSON numbers as values of `dtype`, refused (ValueError) where they would change.

    numpy 1 wraps an integer out of the type's range (70000 as INT16 is 4464) and
    truncates a fraction; a chunk's values either fit or are refused.
    """
    array = np.asarray(values).reshape(-1)
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise ValueError("it holds something other than numbers")
    if dtype.kind in "iu" and array.size:
        if array.dtype.kind == "f":
            with np.errstate(invalid="ignore"):  # inf and nan: not whole, no warning
                whole = np.isfinite(array) & (np.mod(array, 1) == 0)
            if not np.all(whole):
                raise ValueError(f"{dtype.name} takes whole numbers")
        limits = np.iinfo(dtype)
        if array.min() < limits.min or array.max() > limits.max:
            raise ValueError(f"{dtype.name} takes {limits.min} to {limits.max}")
    if dtype.kind != "f":
        return array.astype(dtype)
    converted, overflowed = cast_float(array, dtype)
    if overflowed is not None:
        raise ValueError(f"{dtype.name} takes {float_range(dtype)}")
    return converted


def _reason(message: str | None) -> str:
    """A close frame's reason: at most 123 bytes of UTF-8."""
    return (message or "").encode()[:123].decode("utf-8", "ignore")


def _frame(result: InferResult, signature: ModelSignature) -> str | bytes:
    """One model response as one message (see the module's docstring)."""
    outputs = {
        spec.name: result.as_numpy(spec.name)
        for spec in signature.answer_outputs
        if result.as_numpy(spec.name) is not None
    }
    if len(outputs) == 1:
        (array,) = outputs.values()
        if array.dtype == object and array.size == 1:
            value = array.reshape(-1)[0]
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return bytes(value)
    document = {
        name: [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else v
            for v in array.reshape(-1).tolist()
        ]
        for name, array in outputs.items()
    }
    return json.dumps(document)


def _outcome(task: asyncio.Task[Ending]) -> tuple[Ending, str | None]:
    """How the finished reader or writer ended the stream, and the message for the client."""
    exc = task.exception()
    if isinstance(exc, StreamError):
        return exc.ending, exc.message
    if exc is not None:
        log.error("stream failed: %r", exc)
        return Ending.MODEL_ERROR, f"the stream failed: {type(exc).__name__}"
    return task.result(), None


async def _refuse(connection: ServerConnection, error: StreamError) -> None:
    with contextlib.suppress(ConnectionClosed):
        await connection.send(json.dumps({"error": error.message}))
        await connection.close(error.ending.code, _reason(error.message))
