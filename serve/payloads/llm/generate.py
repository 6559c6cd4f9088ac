"""Text generation on /invocations: a schema's request, a model's mapping, Triton, and back.

The adapter hands a JSON body for a declared text-generation model
(SERVE_TEXT_GENERATION_MODELS) here unless it is a KServe v2 request. The body
names its schema (schemas.py); the model's config picks its input mapping
(mappings.py); each of the request's choices (`n`) is one Triton request, run
at once: through Triton's generate_stream route for a decoupled model (one
event per response, relayed as it comes), through infer for others (one
answer). The schema writes the answer, or the stream, and its errors in its
own shape. Sessions (serve/sessions/) reach a model here too: their sequence
flags ride in the invocation's parameters, which every Triton request carries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from urllib.parse import quote

from serve.errors import BadGateway, ConfigError, ServeError
from serve.payloads.events import event_data, events
from serve.payloads.llm.mappings import (
    AUTO,
    MAPPINGS,
    TEXT_OUTPUT,
    InputMapping,
    read_piece,
    tensors,
)
from serve.payloads.llm.request import (
    LENGTH,
    STOP,
    Choice,
    Delta,
    Generation,
    Result,
    Sampling,
    TextRequest,
    Usage,
)
from serve.payloads.llm.schemas import (
    EVENT_STREAM,
    SCHEMAS,
    Answering,
    Context,
    Item,
    RequestSchema,
)
from serve.payloads.llm.templates import ChatTemplate, find_chat_template
from serve.payloads.offload import Offload
from serve.payloads.signature import ModelSignature
from serve.payloads.triton_http import TritonHttp
from serve.payloads.v2 import binary_request, read_answer
from serve.settings import Settings
from serve.triton.client import triton_failure

log = logging.getLogger(__name__)

JSON_HEADERS = {"Content-Type": "application/json"}
# The vLLM backend's additional outputs, each asked for by its flag input.
FLAGGED_OUTPUTS = {
    "num_input_tokens": "return_num_input_tokens",
    "num_output_tokens": "return_num_output_tokens",
    "finish_reason": "return_finish_reason",
    "logprobs": "return_logprobs",
}


@dataclasses.dataclass(frozen=True)
class TextModel:
    """A declared text-generation model, as start-up found it."""

    name: str
    # SERVE_TEXT_GENERATION_INPUTS: a mapping's name, or auto.
    inputs: str = AUTO
    template: ChatTemplate | None = None


def text_models(folders: Mapping[str, Path], settings: Settings) -> dict[str, TextModel]:
    """The declared text-generation models (SERVE_TEXT_GENERATION_MODELS) with their chat
    templates, given the model folders by name: serve's payload service and each writer
    process (writers.py) build the same. A declared name `folders` lacks stops start-up."""
    unknown = [name for name in settings.text_generation_models if name not in folders]
    if unknown:
        raise ConfigError(
            f"SERVE_TEXT_GENERATION_MODELS names {', '.join(unknown)}, which the model "
            f"repository does not hold; it holds: {', '.join(sorted(folders))}"
        )
    return {
        name: TextModel(
            name,
            settings.text_generation_inputs,
            find_chat_template(folders[name], settings.chat_template),
        )
        for name in settings.text_generation_models
    }


@dataclasses.dataclass(frozen=True)
class Answer:
    content_type: str
    body: bytes = b""
    chunks: AsyncIterator[bytes] | None = None


Signatures = Callable[[str, object], Awaitable[ModelSignature]]


class TextGeneration:
    def __init__(
        self,
        triton: TritonHttp,
        signatures: Signatures,
        models: Mapping[str, TextModel],
        max_tokens: int,
        offload: Offload,
    ):
        """`offload`: where a large body's reading (its chat template's rendering above
        all) runs, so other requests keep being answered (serve/payloads/offload.py)."""
        self.triton = triton
        self._offload = offload
        self._signatures = signatures
        self._models = dict(models)
        self._max_tokens = max_tokens

    def serves(self, model: str) -> bool:
        return model in self._models

    async def invoke(
        self,
        name: str,
        key: object,
        document: object,
        parameters: Mapping[str, object],
        size: int = 0,
    ) -> Answer:
        """The answer of model `name` to a schema's body (of `size` bytes); errors carry the
        schema's shape."""
        model = self._models[name]
        schema = SCHEMAS.for_body(document, name)
        assert isinstance(document, dict)
        try:
            context = Context(name, model.template, self._max_tokens)
            request = await self._offload.run(size, schema.read, document, context)
            signature = await self._signatures(name, key)
            mapping = MAPPINGS.choose(signature, model.inputs)
            answering = Answering.new(schema.id_prefix, request.model or name)
            items = self._items(name, signature, mapping, request.generation, parameters)
            if request.generation.stream:
                return await self._stream(schema, request, items, answering)
            result = await _collect(items, request.generation.n)
            return Answer("application/json", schema.answer(request, result, answering))
        except ServeError as exc:
            exc.body = schema.error(exc)
            raise

    async def _stream(
        self,
        schema: RequestSchema,
        request: TextRequest,
        items: AsyncGenerator[Item, None],
        answering: Answering,
    ) -> Answer:
        chunks = schema.stream(request, items, answering)
        try:
            # Awaited before the answer starts: a model that fails before its first
            # response gets the status that says why (a 200 is final once sent).
            first = await anext(chunks, b"")
        except BaseException:
            await _close(chunks, items)
            raise
        return Answer(EVENT_STREAM, chunks=_guarded(first, chunks, items, schema))

    async def _items(
        self,
        name: str,
        signature: ModelSignature,
        mapping: InputMapping,
        generation: Generation,
        parameters: Mapping[str, object],
    ) -> AsyncGenerator[Item, None]:
        """The choices' deltas as they come, then the usage. Every choice's request is
        built (so checked) before any is sent."""
        requests = [mapping.build(_choice(generation, i), signature) for i in range(generation.n)]
        usage = Usage()
        streams = [
            self._choice(name, signature, index, values, {**extra, **parameters}, generation, usage)
            for index, (values, extra) in enumerate(requests)
        ]
        merged = streams[0] if len(streams) == 1 else _merged(streams)
        try:
            async for delta in merged:
                yield delta
        finally:
            await merged.aclose()
        yield usage

    async def _choice(
        self,
        name: str,
        signature: ModelSignature,
        index: int,
        values: dict[str, object],
        parameters: dict[str, object],
        generation: Generation,
        usage: Usage,
    ) -> AsyncGenerator[Delta, None]:
        """One choice: a delta per model response, then one carrying its finish reason."""
        # A model that cannot leave the prompt out echoes it in a whole answer.
        strip = "exclude_input_in_output" not in values and not values.get("stream")
        finish = None
        produced: int | None = None
        responses = self._responses(name, signature, values, parameters)
        try:
            async for outputs in responses:
                piece = read_piece(outputs)
                text = piece.text
                if strip:
                    text = text.removeprefix(generation.prompt)
                    strip = False
                if piece.input_tokens is not None and usage.prompt_tokens is None:
                    usage.prompt_tokens = piece.input_tokens
                if piece.output_tokens is not None:
                    produced = (produced or 0) + piece.output_tokens
                finish = piece.finish_reason or finish
                if text or piece.logprobs:
                    yield Delta(index, text, piece.logprobs, piece.output_tokens)
        finally:
            await responses.aclose()
        if produced is not None:
            usage.completion_tokens = (usage.completion_tokens or 0) + produced
        if finish is None:
            finish = LENGTH if (produced or 0) >= generation.sampling.max_tokens else STOP
        yield Delta(index, "", finish_reason=finish)

    async def _responses(
        self,
        name: str,
        signature: ModelSignature,
        values: dict[str, object],
        parameters: dict[str, object],
    ) -> AsyncGenerator[Mapping[str, object], None]:
        """Each of the model's responses, as its outputs by name."""
        if not signature.decoupled:
            yield await self._infer(name, signature, values, parameters)
            return
        document = dict(values)
        if parameters:
            document["parameters"] = parameters
        stream = await self.triton.stream(
            "POST", _path(name, "generate_stream"), json.dumps(document).encode(), JSON_HEADERS
        )
        if stream.status != 200:
            body = b"".join([chunk async for chunk in stream.chunks])
            raise triton_failure(stream.status, event_data(body) or body)
        arriving = events(stream.chunks)
        try:
            async for event in arriving:
                data = event_data(event)
                if not data:
                    continue
                try:
                    fields = json.loads(data)
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise BadGateway(f"model {name!r} streamed an unreadable event: {exc}") from exc
                if not isinstance(fields, dict):
                    raise BadGateway(f"model {name!r} streamed {data[:200]!r}, not an object")
                if "error" in fields:
                    raise triton_failure(400, data)
                yield fields
        finally:
            await arriving.aclose()

    async def _infer(
        self,
        name: str,
        signature: ModelSignature,
        values: dict[str, object],
        parameters: dict[str, object],
    ) -> Mapping[str, object]:
        wanted = [TEXT_OUTPUT] + [o for o, flag in FLAGGED_OUTPUTS.items() if values.get(flag)]
        outputs = tuple(spec for spec in signature.outputs if spec.name in wanted)
        specs = {spec.name: spec for spec in signature.inputs}
        body, headers = binary_request(tensors(values, signature), specs, parameters, outputs)
        reply = await self.triton.request("POST", _path(name, "infer"), body, headers)
        if reply.status != 200:
            raise triton_failure(reply.status, reply.body)
        return read_answer(reply.body, reply.headers, tuple(wanted)).tensors


def _choice(generation: Generation, index: int) -> Generation:
    """Choice `index`'s generation: a seeded request seeds each choice apart, reproducibly."""
    seed = generation.sampling.seed
    if index == 0 or seed is None:
        return generation
    sampling: Sampling = dataclasses.replace(generation.sampling, seed=(seed + index) % 2**63)
    return dataclasses.replace(generation, sampling=sampling)


def _path(name: str, route: str) -> str:
    return f"/v2/models/{quote(name, safe='')}/{route}"


async def _merged(streams: list[AsyncGenerator[Delta, None]]) -> AsyncGenerator[Delta, None]:
    """Several choices' deltas as each comes; the first failure ends them all."""
    queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()

    async def drain(stream: AsyncGenerator[Delta, None]) -> None:
        try:
            async for delta in stream:
                await queue.put(delta)
            await queue.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the reader, which raises it
            await queue.put(exc)
        finally:
            await stream.aclose()

    tasks = [asyncio.get_running_loop().create_task(drain(stream)) for stream in streams]
    running = len(tasks)
    try:
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _collect(items: AsyncGenerator[Item, None], n: int) -> Result:
    choices = [Choice(index) for index in range(n)]
    usage = Usage()
    try:
        async for item in items:
            if isinstance(item, Usage):
                usage = item
            else:
                choices[item.index].add(item)
    finally:
        await items.aclose()
    return Result(choices, usage)


async def _guarded(
    first: bytes,
    chunks: AsyncIterator[bytes],
    items: AsyncGenerator[Item, None],
    schema: RequestSchema,
) -> AsyncGenerator[bytes, None]:
    """The stream, its failures once started written as the schema's error event."""
    try:
        yield first
        async for chunk in chunks:
            yield chunk
    except ServeError as exc:
        log.warning("text generation stream ended early: %s", exc.message)
        yield schema.stream_error(exc)
    except (ConnectionError, TimeoutError) as exc:
        log.warning("text generation stream ended early: %s", exc)
        yield schema.stream_error(ServeError(f"the stream failed: {exc}"))
    finally:
        await _close(chunks, items)


async def _close(chunks: AsyncIterator[bytes], items: AsyncGenerator[Item, None]) -> None:
    """End the schema's stream and the model's requests (a caller who left, or a failure)."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()
    await items.aclose()
