"""One invocation nginx could not hand to Triton itself, from request to answer.

- A KServe v2 body (JSON, or binary+json) goes to Triton as sent, a JSON one
  asking for binary outputs whose JSON answer is written here (v2.py says
  why; nginx sends v2 JSON here for models with large outputs). It arrives
  here after Triton refused it (sent once more to read the error; out of
  memory becomes 507, a body Triton cannot parse 400), or because Accept asks
  for another encoding of the answer.
- Any other body is decoded by its payload format (formats.py, chosen by
  Content-Type) into records, which become input
  tensors by the model's signature (read once per model from Triton's
  `/v2/models/NAME/config`, cached), sent to Triton in binary, and the
  outputs are encoded as Accept asks.
- A decoupled model streams: the request goes to Triton's generate_stream
  route and each response becomes a chunk as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from urllib.parse import quote

import numpy as np

from serve.errors import (
    ModelNotFound,
    NotAcceptable,
    PayloadError,
    ServeError,
    Unavailable,
    almost_v2,
    read_as_v2,
)
from serve.multi_model.registry import ModelRegistry
from serve.payloads import batching
from serve.payloads.batching import Origin
from serve.payloads.body import Body
from serve.payloads.codecs import binary_codec, json_codec
from serve.payloads.events import event_data, events
from serve.payloads.formats import (
    BINARY,
    EVENTS,
    JSONLINES,
    V2,
    PayloadFormat,
    Route,
    answer_candidates,
    feasible,
    request_format,
    takes_bytes,
)
from serve.payloads.limits import PayloadLimits
from serve.payloads.llm.generate import TextGeneration, TextModel
from serve.payloads.media import MediaType
from serve.payloads.offload import Offload
from serve.payloads.records import parameter_inputs, record_count, tensors_from_records
from serve.payloads.signature import ModelSignature
from serve.payloads.triton_http import TritonHttp
from serve.payloads.v2 import (
    Outputs,
    binary_outputs_request,
    binary_request,
    is_v2_request,
    json_from_binary,
    looks_like_v2_request,
    read_answer,
)
from serve.sagemaker.contract import BINARY_CONTENT_TYPE, BINARY_JSON, full_match
from serve.sagemaker.custom_attributes import HEADER as CUSTOM_ATTRIBUTES_HEADER
from serve.sagemaker.custom_attributes import OUTPUT as CUSTOM_ATTRIBUTES
from serve.sagemaker.custom_attributes import header_value
from serve.settings import INFERENCE_TYPES
from serve.triton.client import error_message, triton_failure

log = logging.getLogger(__name__)


BINARY_HEADER = full_match(BINARY_CONTENT_TYPE, re.IGNORECASE)
DECOUPLED = re.compile(r"decoupled", re.IGNORECASE)
SIGNATURE_CACHE_SIZE = 1024


@dataclasses.dataclass(frozen=True)
class Invocation:
    # The model as the caller named it (SageMaker's name on a multi-model endpoint).
    model: str
    inference: str
    content_type: str
    accept: str
    # In memory, or spooled to disk past SERVE_BODY_BUFFER_BYTES (serve/payloads/body.py).
    body: Body
    # Request parameters for Triton the caller did not write: a session's sequence
    # flags (serve/sessions/invocations.py), added to an adapted body's own.
    parameters: Mapping[str, object] = dataclasses.field(default_factory=dict)


Headers = tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes = b""
    # A streamed answer: chunks to send as they come (body is then empty).
    chunks: AsyncIterator[bytes] | None = None
    # More headers of the answer: the custom attributes the model set.
    headers: Headers = ()


class PayloadAdapter:
    def __init__(
        self,
        triton: TritonHttp,
        registry: ModelRegistry | None = None,
        text_models: Mapping[str, TextModel] | None = None,
        max_tokens: int = 256,
        limits: PayloadLimits | None = None,
    ):
        """`text_models`: the declared text-generation models (SERVE_TEXT_GENERATION_MODELS),
        whose JSON bodies other than v2 requests speak a request schema (serve/payloads/llm/);
        `max_tokens` is what they generate when a request names no limit."""
        self.triton = triton
        self._registry = registry
        # SERVE_MAX_RECORDS, SERVE_MAX_CHUNKS (serve/payloads/limits.py).
        self.limits = limits or PayloadLimits()
        # Large bodies' decoding and answers, off the event loop (serve/payloads/offload.py).
        self.offload = Offload()
        self._signatures: dict[object, ModelSignature] = {}
        self.text = (
            TextGeneration(triton, self.signature, text_models, max_tokens, self.offload)
            if text_models
            else None
        )

    def close(self) -> None:
        self.triton.close()
        self.offload.close()

    async def invoke(self, invocation: Invocation) -> Reply:
        if invocation.inference not in INFERENCE_TYPES:
            raise ServeError(f"unknown inference type {invocation.inference!r}")
        name, key = self._resolve(invocation.model)
        if name == invocation.model:
            return await self._invoke(invocation, name, key)
        # A multi-model name nginx cannot route has a hashed name in Triton; the
        # caller sees the name it loaded, in answers and in errors.
        try:
            reply = await self._invoke(invocation, name, key)
        except ServeError as exc:
            exc.message = exc.message.replace(name, invocation.model)
            raise
        return _as_called(reply, name, invocation.model)

    async def _invoke(self, invocation: Invocation, name: str, key: object) -> Reply:
        """The answer of Triton's model `name` (the invoked model's name there)."""
        payload_format, media = request_format(invocation.content_type)
        payload_format.check_body(invocation.body, media)
        if payload_format is BINARY:
            return await self._native(invocation, name, key, BINARY)
        document: object = None
        size = invocation.body.size
        if payload_format.route is Route.JSON:
            document = await self.offload.run(size, _read_json, invocation.body, self.limits)
            if is_v2_request(document):
                return await self._native(invocation, name, key, V2, document)
            if self.text is not None and self.text.serves(name):
                text = await self.text.invoke(name, key, document, invocation.parameters, size)
                return Reply(200, text.content_type, text.body, chunks=text.chunks)
            if invocation.inference != "infer" and _names_inputs(document):
                return await self._native(invocation, name, key, V2, document)
        elif (
            v2 := await self.offload.run(size, v2_document, payload_format, media, invocation.body)
        ) is not None:
            return await self._read_as_v2(invocation, name, key, media, v2)
        signature = await self.signature(name, key)
        records, parameters, origin = await self.offload.run(
            size, payload_format.read, media, invocation.body, document, signature, self.limits
        )
        parameters = {**parameters, **invocation.parameters}
        if signature.decoupled or invocation.inference != "infer":
            return await self._generate(invocation, name, signature, records, parameters)
        answer = feasible(answer_candidates(invocation.accept, payload_format.answer), signature)
        outputs, answered = await self._infer(name, signature, records, parameters, origin, size)
        del records, origin  # the decoded body goes before the answer is written
        attributes = _custom_attributes(outputs, signature)
        encoded = await self.offload.run(size, answer.write, outputs, answered)
        return Reply(200, answer.content_type, encoded, headers=attributes)

    async def _infer(
        self,
        name: str,
        signature: ModelSignature,
        records: Sequence[object],
        parameters: dict[str, object],
        origin: Origin,
        size: int = 0,
    ) -> tuple[Outputs, ModelSignature]:
        """Triton's answer to the records, in chunks the model takes (batching.py).

        Every chunk is built, so every record checked, before any is sent: a bad
        record costs the model nothing. The answer's signature is the one to
        encode it with (a model that does not batch answers a batch of records).
        """
        spans = batching.chunks(len(records), signature, self.limits)

        def build() -> list[tuple[bytes, dict[str, str]]]:
            return [
                self._infer_request(signature, records, parameters, origin, span) for span in spans
            ]

        # A large body's requests are built off the event loop (offload.py).
        requests = await self.offload.run(size, build)
        if len(requests) == 1:
            return await self._send(name, signature, *requests[0]), signature
        slots = asyncio.Semaphore(batching.in_flight(signature))

        async def send(request: tuple[bytes, dict[str, str]], span: range) -> Outputs:
            async with slots:
                try:
                    return await self._send(name, signature, *request)
                except ServeError as exc:
                    exc.message = f"{exc.message} (in the request's {origin.describe(span)})"
                    raise

        # Every chunk is awaited, failed or not, so none is left running unobserved; the
        # first failure in request order is the answer. Each request's body goes once sent.
        sends = [send(request, span) for request, span in zip(requests, spans, strict=True)]
        requests.clear()
        results = await asyncio.gather(*sends, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return batching.join(results, signature)  # type: ignore[arg-type]

    def _infer_request(
        self,
        signature: ModelSignature,
        records: Sequence[object],
        parameters: dict[str, object],
        origin: Origin,
        span: range,
    ) -> tuple[bytes, dict[str, str]]:
        """One Triton request (body, headers) for the records of `span`, checked."""
        chunk = records[span.start : span.stop]
        tensors = tensors_from_records(chunk, signature, origin.within(span))
        extra, parameters = parameter_inputs(
            parameters, signature, record_count(tensors, signature)
        )
        for input_name, tensor in extra.items():
            tensors.setdefault(input_name, tensor)
        specs = {spec.name: spec for spec in signature.inputs}
        return binary_request(tensors, specs, parameters, signature.asked_outputs)

    async def _send(
        self, name: str, signature: ModelSignature, body: bytes, headers: dict[str, str]
    ) -> Outputs:
        reply = await self.triton.request("POST", _path(name, "infer"), body, headers)
        if reply.status != 200:
            raise triton_failure(reply.status, reply.body)
        wanted = tuple(spec.name for spec in signature.asked_outputs)
        return read_answer(reply.body, reply.headers, wanted)

    async def signature(self, name: str, key: object) -> ModelSignature:
        """The model's signature, read from Triton once per loaded model."""
        cached = self._signatures.get(key)
        if cached is not None:
            return cached
        reply = await self.triton.request("GET", f"/v2/models/{quote(name, safe='')}/config")
        if reply.status != 200:
            failure = triton_failure(reply.status, reply.body, f"model {name!r}")
            if isinstance(failure, ModelNotFound):
                raise failure
            raise Unavailable(f"cannot read model {name!r}'s configuration: {failure.message}")
        signature = ModelSignature.from_triton_json(reply.body)
        if len(self._signatures) >= SIGNATURE_CACHE_SIZE:
            self._signatures.pop(next(iter(self._signatures)))
        self._signatures[key] = signature
        return signature

    def _resolve(self, model: str) -> tuple[str, object]:
        """Triton's name for the invoked model, and the key its signature is cached under."""
        if self._registry is None:
            return model, model
        loaded = self._registry.get(model)  # 404 when it is not loaded
        return loaded.triton_names[-1], loaded

    async def _read_as_v2(
        self, invocation: Invocation, name: str, key: object, media: MediaType, document: object
    ) -> Reply:
        """A v2 request sent with a type that could also be a model's bytes (octet-stream,
        text/plain, an unknown type): read as v2, and Triton's refusal says so."""
        try:
            return await self._native(invocation, name, key, V2, document)
        except ServeError as exc:
            if not 400 <= exc.status < 500:
                raise
            model = None
            with contextlib.suppress(ServeError):
                signature = await self.signature(name, key)
                model = signature.name if takes_bytes(signature) else None
            exc.message = f"{exc.message} ({read_as_v2(media.mime, model)})"
            raise

    async def _native(
        self,
        invocation: Invocation,
        name: str,
        key: object,
        own: PayloadFormat,
        document: object = None,
    ) -> Reply:
        """A v2 body: to Triton as sent; the answer relayed, or re-encoded for Accept.

        A v2 JSON `document` for the infer route goes asking for binary outputs,
        unless it chose how they travel (v2.py says why); its JSON answer is then
        written here.
        """
        headers = {"Content-Type": "application/json"}
        if own is BINARY:
            headers["Inference-Header-Content-Length"] = str(
                binary_codec.header_size(invocation.content_type, invocation.body)
            )
        signature = None
        if invocation.inference == "generate_stream":
            # Server-sent events as Triton writes them, or JSON Lines if Accept asks.
            answer = answer_candidates(invocation.accept, EVENTS, streaming=True)[0]
            return await self._stream(_path(name, "generate_stream"), invocation.body, answer)
        try:
            answer = answer_candidates(invocation.accept, own)[0]
        except NotAcceptable:
            # Perhaps a stream's type (text/event-stream), for a decoupled model.
            signature = await self.signature(name, key)
            if not signature.decoupled:
                raise
            return await self._v2_stream(invocation, name, signature, own)
        if not answer.native:
            signature = await self.signature(name, key)
            answer = feasible(answer_candidates(invocation.accept, own), signature)
        path = _path(name, invocation.inference)
        binary_outputs = None
        if own is V2 and invocation.inference == "infer":
            binary_outputs = binary_outputs_request(document)
        reply = await self.triton.request("POST", path, binary_outputs or invocation.body, headers)
        if reply.status == 501 and DECOUPLED.search(error_message(reply.body)):
            signature = signature or await self.signature(name, key)
            return await self._v2_stream(invocation, name, signature, own)
        if reply.status != 200:
            raise triton_failure(reply.status, reply.body)
        if invocation.inference == "generate":
            _check_generate_answer(reply.body)
        outputs = None
        attributes: Headers = ()
        if invocation.inference == "infer":
            model = signature or await self.signature(name, key)
            if model.custom_attributes is not None:
                outputs = read_answer(reply.body, reply.headers)
                attributes = _custom_attributes(outputs, model)
        if signature is None and binary_outputs is not None:
            # The caller's v2 JSON (the custom attributes' output included).
            return Reply(
                200,
                "application/json",
                json_from_binary(reply.body, reply.headers),
                headers=attributes,
            )
        if signature is None:
            # Relayed as Triton wrote it (the custom attributes' output included).
            content_type = reply.headers.get("content-type", "application/json")
            header_size = reply.headers.get("inference-header-content-length")
            if header_size:
                content_type = f"{BINARY_JSON};json-header-size={header_size}"
            return Reply(200, content_type, reply.body, headers=attributes)
        outputs = outputs or read_answer(reply.body, reply.headers)
        return Reply(200, answer.content_type, answer.write(outputs, signature), headers=attributes)

    async def _v2_stream(
        self, invocation: Invocation, name: str, signature: ModelSignature, own: PayloadFormat
    ) -> Reply:
        """A v2 request for a decoupled model, which Triton's infer route refuses: stream it."""
        if own is BINARY:
            raise PayloadError(
                f"model {signature.name!r} is decoupled and streams through Triton's "
                "generate route, which takes JSON; send its inputs as JSON"
            )
        document = json_codec.parse(invocation.body.read())
        return await self._generate(invocation, name, signature, *_v2_as_records(document))

    async def _generate(
        self,
        invocation: Invocation,
        name: str,
        signature: ModelSignature,
        records: Sequence[object],
        parameters: dict[str, object],
    ) -> Reply:
        """Through Triton's generate extension: decoupled models, and the generate types."""
        if len(records) != 1:
            raise PayloadError(
                f"model {signature.name!r} answers through Triton's generate routes "
                f"(decoupled, or SAGEMAKER_TRITON_INFERENCE_TYPE), one record per request; "
                f"this request holds {len(records)}"
            )
        tensors = tensors_from_records(records, signature)
        extra, parameters = parameter_inputs(parameters, signature, 1)
        for input_name, tensor in extra.items():
            tensors.setdefault(input_name, tensor)
        document: dict[str, object] = {
            input_name: _generate_value(input_name, tensor[0] if signature.batched else tensor)
            for input_name, tensor in tensors.items()
        }
        if parameters:
            document["parameters"] = parameters
        body = json.dumps(document).encode()
        if invocation.inference == "generate":
            reply = await self.triton.request(
                "POST", _path(name, "generate"), body, {"Content-Type": "application/json"}
            )
            if reply.status != 200:
                raise triton_failure(reply.status, reply.body)
            _check_generate_answer(reply.body)
            return Reply(200, "application/json", reply.body)
        own = EVENTS if invocation.inference == "generate_stream" else JSONLINES
        answer = answer_candidates(invocation.accept, own, streaming=True)[0]
        return await self._stream(_path(name, "generate_stream"), body, answer)

    async def _stream(self, path: str, body: bytes | Body, answer: PayloadFormat) -> Reply:
        stream = await self.triton.stream("POST", path, body, {"Content-Type": "application/json"})
        if stream.status != 200:
            body = b"".join([chunk async for chunk in stream.chunks])
            # A stream whose first response is an error: Triton answers 400 with
            # that response as an event (data: {"error": ...}).
            raise triton_failure(stream.status, event_data(body) or body)
        chunks = stream.chunks if answer is EVENTS else _json_lines(stream.chunks)
        content_type = answer.content_type
        # The first chunk is awaited before the answer starts: a stream that fails
        # before any output gets the status that says why (a 200 is final once
        # sent), and the answer's head travels to nginx in one piece with it.
        first = await anext(chunks, None)
        return Reply(200, content_type, chunks=_starting_with(first, chunks))


def _read_json(body: Body, limits: PayloadLimits) -> object:
    return json_codec.read_document(body.read(), limits)


def _custom_attributes(outputs: Outputs, signature: ModelSignature) -> Headers:
    """The answer's header from the model's custom attributes output, taken out of `outputs`."""
    array = outputs.tensors.pop(CUSTOM_ATTRIBUTES, None)
    if array is None or array.size == 0:
        return ()
    value = header_value(signature.name, array.reshape(-1)[0])
    return ((CUSTOM_ATTRIBUTES_HEADER, value),) if value else ()


def _path(name: str, inference: str) -> str:
    return f"/v2/models/{quote(name, safe='')}/{inference}"


def _names_inputs(document: object) -> bool:
    """A generate-extension body: an object whose keys are input names (not a simple shape)."""
    return isinstance(document, dict) and not ({"inputs", "instances"} & document.keys())


def _v2_as_records(document: object) -> tuple[list[object], dict[str, object]]:
    """A v2 request for a decoupled model, or a body naming its inputs (the generate
    extension's), as one named record for the generate route."""
    if not isinstance(document, dict):
        raise PayloadError("a streaming request's body is a JSON object naming its inputs")
    parameters = document.get("parameters") or {}
    if is_v2_request(document):
        record = {item["name"]: item.get("data") for item in document["inputs"]}
    else:
        record = {k: v for k, v in document.items() if k != "parameters"}
    return [record], parameters if isinstance(parameters, dict) else {}


def v2_document(
    payload_format: PayloadFormat, media: MediaType, body: Body
) -> dict[str, object] | None:
    """The body as a KServe v2 request, for a format whose types may carry one besides
    their own kind of body (`v2_first`); None for any other body.

    A body that does not open with `{` (an image, a text) is not parsed at all, and
    `format=CHOICE` (format=raw) keeps the body the format's own. A body shaped like
    a v2 request (`inputs`, a list of objects) that is not one is a 400 naming both
    readings: read as bytes, it would reach the model as a silent wrong answer.
    """
    if not payload_format.v2_first or media.params.get("format") == payload_format.choice:
        return None
    if not body.head(64).lstrip().startswith(b"{"):
        return None
    try:
        document = json_codec.parse(body.read())
    except PayloadError:
        return None
    if is_v2_request(document):
        return document  # type: ignore[return-value]
    if looks_like_v2_request(document) and payload_format.choice is not None:
        raise PayloadError(almost_v2(media.mime, payload_format.choice))
    return None


def _generate_value(name: str, tensor: object) -> object:
    array = np.asarray(tensor)
    if array.dtype == object:
        try:
            items = [item.decode("utf-8") for item in array.reshape(-1)]
        except UnicodeDecodeError as exc:
            raise PayloadError(
                f"input {name!r} holds bytes that are not UTF-8 text; Triton's generate "
                "routes (streaming) carry text only"
            ) from exc
        return items[0] if array.size == 1 else items
    return array.reshape(-1)[0].item() if array.size == 1 else array.reshape(-1).tolist()


async def _json_lines(chunks: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """Triton's server-sent events as JSON Lines: one line per model response."""
    stream = events(chunks)
    try:
        async for event in stream:
            line = _event_line(event)
            if line:
                yield line
    finally:
        await stream.aclose()  # a caller who left early ends Triton's request now


async def _starting_with(
    first: bytes | None, rest: AsyncGenerator[bytes, None]
) -> AsyncGenerator[bytes, None]:
    try:
        if first is not None:
            yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()


def _event_line(event: bytes) -> bytes:
    data = event_data(event)
    if not data:
        return b""
    try:
        fields = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return json.dumps({"error": data.decode("utf-8", "replace")}).encode() + b"\n"
    if isinstance(fields, dict):
        fields.pop("model_name", None)
        fields.pop("model_version", None)
    return json.dumps(fields).encode() + b"\n"


def _check_generate_answer(body: bytes) -> None:
    """Triton 2.51 answers generate's failures with 200 and an error; newer ones with 400."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return
    if isinstance(document, dict) and set(document) == {"error"}:
        raise PayloadError(str(document["error"]))


def _as_called(reply: Reply, triton_name: str, caller: str) -> Reply:
    """`reply` with the caller's name for the model wherever Triton wrote its own.

    The names are replaced as JSON strings: Triton's hashed names are letters,
    digits and '-', so its name appears quoted exactly so, in v2 JSON answers,
    binary+json headers (whose size changes with it) and streamed events.
    """
    old, new = json.dumps(triton_name).encode(), json.dumps(caller).encode()
    if reply.chunks is not None:
        return dataclasses.replace(reply, chunks=_replaced(reply.chunks, old, new))
    binary = BINARY_HEADER.match(reply.content_type)
    if binary is not None:
        size = int(binary.group("size"))
        header = reply.body[:size].replace(old, new)
        content_type = f"{BINARY_JSON};json-header-size={len(header)}"
        return dataclasses.replace(
            reply, content_type=content_type, body=header + reply.body[size:]
        )
    if reply.content_type.startswith("application/json"):
        return dataclasses.replace(reply, body=reply.body.replace(old, new))
    return reply


async def _replaced(chunks: AsyncIterator[bytes], old: bytes, new: bytes) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk.replace(old, new)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
