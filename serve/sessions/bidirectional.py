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

Input waits too: chunks go to Triton one bounded queue at a time; when it is
full this server stops reading, and TCP pushes back on the client. Pings are
answered with pongs (SageMaker pings every 60 s and closes the connection
after five go unanswered); this server pings too, to find clients that are
gone without a word.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import grpc
import numpy as np
from tritonclient.grpc import InferInput, InferResult
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException
from websockets.asyncio.server import Server, ServerConnection, unix_serve
from websockets.exceptions import ConnectionClosed

from serve.payloads.loop_thread import LoopThread
from serve.payloads.service import MODEL_HEADER
from serve.payloads.signature import ModelSignature, TensorSpec
from serve.sagemaker.contract import BIDIRECTIONAL_ROUTE as ROUTE
from serve.sessions.registry import SEQUENCE_IDS, SequenceIds

log = logging.getLogger(__name__)
# The library logs every connection at INFO; the streams' own lines say more.
logging.getLogger("websockets.server").setLevel(logging.WARNING)

# Chunks on their way to Triton at most, per stream, before reading pauses.
PENDING_CHUNKS = 16
# The largest message a client may send (SageMaker's payload parts are far smaller).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# How long the END that releases a stream's state may take.
RELEASE_SECONDS = 30.0

Request = dict[str, Any]


class Ending(enum.Enum):
    """How a stream ended, and the close code its client gets."""

    FINISHED = 1000  # the client's empty message: every answer was sent
    CLIENT_GONE = 1001  # closed or vanished; nothing is sent
    BAD_INPUT = 1007
    BACKPRESSURE = 1008
    MODEL_ERROR = 1011


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
        send_timeout: float,
        ids: SequenceIds = SEQUENCE_IDS,
    ):
        super().__init__(socket_path, "bidirectional", asyncio.new_event_loop())
        self._grpc_url = f"127.0.0.1:{grpc_port}"
        self._send_timeout = send_timeout
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
            max_size=MAX_MESSAGE_BYTES,
            max_queue=PENDING_CHUNKS,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=2,
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
        # The model nginx picked (the endpoint's, or target_model=NAME), percent-encoded.
        model = unquote(request.headers.get(MODEL_HEADER, ""))
        model = parse_qs(target.query).get("target_model", [model])[0]
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

    async def _run_stream(
        self, connection: ServerConnection, model: str, signature: ModelSignature, sequence_id: int
    ) -> None:
        """One stream, from its first chunk to its sequence's end in Triton."""
        # Logs name a stream by its number here: its sequence id is not for every reader.
        self._count += 1
        number = self._count
        stream = _Stream(connection, model, signature, sequence_id, self._send_timeout)
        self.open_streams += 1
        log.info("stream %d opened on model %r", number, model)
        try:
            ending = await stream.run(self._client)
        finally:
            self.open_streams -= 1
        log.info("stream %d ended: %s", number, ending.name.lower().replace("_", " "))
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


class _Stream:
    """One WebSocket and the Triton stream behind it."""

    def __init__(
        self,
        connection: ServerConnection,
        model: str,
        signature: ModelSignature,
        sequence_id: int,
        send_timeout: float,
    ):
        self.connection = connection
        self.model = model
        self.signature = signature
        self.sequence_id = sequence_id
        self.started = False
        self._send_timeout = send_timeout
        self._requests: asyncio.Queue[Request | None] = asyncio.Queue(PENDING_CHUNKS)

    async def run(self, client: InferenceServerClient) -> Ending:
        responses = client.stream_infer(self._outgoing())
        reader = asyncio.create_task(self._read())
        writer = asyncio.create_task(self._write(responses))
        try:
            done, _pending = await asyncio.wait(
                {reader, writer}, return_when=asyncio.FIRST_COMPLETED
            )
            first = writer if writer in done else reader
            ending, message = _outcome(first)
            if first is reader and ending is Ending.FINISHED:
                # The client's input is over: every answer is still due.
                await asyncio.wait({writer})
                ending, message = _outcome(writer)
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
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
            await self.connection.close(ending.value, (message or "")[:120])

    async def _outgoing(self) -> AsyncIterator[Request]:
        while True:
            request = await self._requests.get()
            if request is None:
                return
            yield request

    async def _read(self) -> Ending:
        try:
            async for message in self.connection:
                data = message.encode() if isinstance(message, str) else message
                if not data:
                    if self.sequence_id:  # a model without sequences has nothing to end
                        await self._requests.put(self.end_request())
                    await self._requests.put(None)
                    return Ending.FINISHED
                spec = self.signature.record_inputs[0]
                request = self._request(_tensor(spec, message, self.signature.batched))
                await self._requests.put(request)
        except ConnectionClosed:
            pass
        return Ending.CLIENT_GONE

    async def _write(self, responses: Any) -> Ending:
        try:
            async for result, error in responses:
                if error is not None:
                    raise StreamError(Ending.MODEL_ERROR, error.message())
                frame = _frame(result, self.signature)
                try:
                    await asyncio.wait_for(self.connection.send(frame), self._send_timeout)
                except (TimeoutError, asyncio.TimeoutError):
                    raise StreamError(
                        Ending.BACKPRESSURE,
                        f"the client took no output for {self._send_timeout:g} s "
                        "(SERVE_STREAM_SEND_TIMEOUT)",
                    ) from None
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


def _tensor(spec: TensorSpec, message: str | bytes, batched: bool) -> InferInput:
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
        try:
            values = np.asarray(json.loads(message), dtype=spec.dtype).reshape(-1)
        except (json.JSONDecodeError, ValueError, TypeError) as exc:
            raise StreamError(
                Ending.BAD_INPUT,
                f"a text chunk for input {spec.describe()} is a JSON array of numbers: {exc}",
            ) from exc
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
        await connection.close(error.ending.value, error.message[:120])
