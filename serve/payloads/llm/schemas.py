"""The request schemas language-model clients send to /invocations: one declared object each.

- `chat`: OpenAI's chat completions (`messages`), as AWS's LMI and vLLM
  containers take it at /invocations; Strands Agents' SageMaker provider,
  LiteLLM's `sagemaker_chat` and the OpenAI types expect it. Answered as a
  `chat.completion`, or streamed as `chat.completion.chunk` events ending
  `data: [DONE]`.
- `completion`: OpenAI's completions (`prompt`), answered as `text_completion`.
- `tgi`: Hugging Face TGI's (`{"inputs": "<text>", "parameters": {...}}`),
  answered `[{"generated_text": ...}]` and streamed as `data: {"token": ...}`
  events; LangChain's SagemakerEndpoint content handlers, LiteLLM's
  `sagemaker` provider, llmeter and most notebooks send it.

Each schema knows the body field that names it, how to read (and check) its
fields into a TextRequest (request.py), how to write an answer, a stream and
an error in its own shape. A schema is one declaration here; the text
generation (generate.py) only orchestrates. Fields a schema does not use are
ignored, as vLLM's and TGI's servers ignore them; a field it uses with a value
out of range is a 400 naming the field and the range.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence

from serve.errors import PayloadError, ServeError
from serve.payloads.llm.request import (
    LENGTH,
    Delta,
    Generation,
    Result,
    Sampling,
    TextRequest,
    TokenLogprob,
    Usage,
)
from serve.payloads.llm.templates import ChatTemplate

# Choices one request may ask for (n): each is a request to the model.
MAX_CHOICES = 16
MAX_STOP_SEQUENCES = 16
MAX_TOP_LOGPROBS = 20
# A token limit fits the INT32 and UINT32 inputs models take it in.
MAX_TOKEN_LIMIT = 2**31 - 1
MAX_SEED = 2**63 - 1
EVENT_STREAM = "text/event-stream; charset=utf-8"
DONE = b"data: [DONE]\n\n"
MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

Item = Delta | Usage


@dataclasses.dataclass(frozen=True)
class Context:
    """What reading a request needs besides its body."""

    # The model in Triton, named in messages and echoed where the caller named none.
    model: str
    template: ChatTemplate | None
    # Tokens generated when the request names no limit (SERVE_TEXT_GENERATION_MAX_TOKENS).
    max_tokens: int


@dataclasses.dataclass(frozen=True)
class Answering:
    """One answer's identity: OpenAI's objects carry an id, a time and a model name."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, prefix: str, model: str) -> Answering:
        return cls(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model)


Streamer = Callable[[TextRequest, AsyncIterator[Item], Answering], AsyncIterator[bytes]]


@dataclasses.dataclass(frozen=True, eq=False)
class RequestSchema:
    """One request schema: how it is told apart, read, answered, streamed and refused."""

    name: str
    # The body field that names it, for messages.
    field: str
    claims: Callable[[Mapping[str, object]], bool]
    read: Callable[[Mapping[str, object], Context], TextRequest]
    # The prefix of its answers' ids (OpenAI's chatcmpl-, cmpl-).
    id_prefix: str
    answer: Callable[[TextRequest, Result, Answering], bytes]
    stream: Streamer
    error: Callable[[ServeError], bytes]
    stream_error: Callable[[ServeError], bytes]


class Schemas:
    """The schemas, each registered once, in the order a body is tried against them."""

    def __init__(self) -> None:
        self._schemas: list[RequestSchema] = []

    def register(self, schema: RequestSchema) -> RequestSchema:
        if any(s.name == schema.name for s in self._schemas):
            raise ValueError(f"schema {schema.name} is registered already")
        self._schemas.append(schema)
        return schema

    def __iter__(self) -> Iterator[RequestSchema]:
        return iter(self._schemas)

    def for_body(self, document: object, model: str) -> RequestSchema:
        if isinstance(document, dict):
            for schema in self._schemas:
                if schema.claims(document):
                    return schema
        fields = ", ".join(f"{s.field} ({s.name})" for s in self._schemas)
        raise PayloadError(
            f"model {model!r} is a text-generation model: its JSON body names one of {fields}, "
            "or is a KServe v2 request"
        )


# --- reading fields ----------------------------------------------------------------------------


class _Fields:
    """Typed, range-checked access to a request's fields; errors name the field."""

    def __init__(self, document: Mapping[str, object], prefix: str = ""):
        self._document = document
        self._prefix = prefix

    def _name(self, key: str) -> str:
        return f"{self._prefix}{key}"

    def get(self, key: str) -> object:
        return self._document.get(key)

    def number(self, key: str, low: float, high: float, above: bool = False) -> float | None:
        value = self._document.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PayloadError(f"{self._name(key)} must be a number, not {_kind(value)}")
        if not (low < value if above else low <= value) or not value <= high:
            bound = f"more than {low}" if above else f"at least {low}"
            raise PayloadError(f"{self._name(key)}={value} must be {bound} and at most {high}")
        return float(value)

    def integer(self, key: str, low: int, high: int) -> int | None:
        value = self._document.get(key)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise PayloadError(f"{self._name(key)} must be a whole number, not {_kind(value)}")
        if not low <= value <= high:
            raise PayloadError(f"{self._name(key)}={value} must be from {low} to {high}")
        return value

    def boolean(self, key: str) -> bool | None:
        value = self._document.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise PayloadError(f"{self._name(key)} must be true or false, not {_kind(value)}")
        return value

    def text(self, key: str) -> str | None:
        value = self._document.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise PayloadError(f"{self._name(key)} must be a string, not {_kind(value)}")
        return value

    def stops(self, key: str) -> tuple[str, ...]:
        value = self._document.get(key)
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
            raise PayloadError(f"{self._name(key)} must be a string or a list of non-empty strings")
        if len(items) > MAX_STOP_SEQUENCES:
            raise PayloadError(
                f"{self._name(key)} holds {len(items)} sequences; at most {MAX_STOP_SEQUENCES}"
            )
        return tuple(items)

    def mapping(self, key: str) -> Mapping[str, object]:
        value = self._document.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise PayloadError(f"{self._name(key)} must be an object, not {_kind(value)}")
        return value


def _kind(value: object) -> str:
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _openai_sampling(fields: _Fields, context: Context, logprobs: int | None) -> Sampling:
    limit = fields.integer("max_completion_tokens", 1, MAX_TOKEN_LIMIT)
    if limit is None:
        limit = fields.integer("max_tokens", 1, MAX_TOKEN_LIMIT)
    return Sampling(
        max_tokens=limit or context.max_tokens,
        temperature=fields.number("temperature", 0, 2),
        top_p=fields.number("top_p", 0, 1, above=True),
        top_k=_top_k(fields),
        stop=fields.stops("stop"),
        seed=fields.integer("seed", 0, MAX_SEED),
        presence_penalty=fields.number("presence_penalty", -2, 2),
        frequency_penalty=fields.number("frequency_penalty", -2, 2),
        repetition_penalty=fields.number("repetition_penalty", 0, 100, above=True),
        logprobs=logprobs,
    )


def _top_k(fields: _Fields) -> int | None:
    """top_k (vLLM's extension, and TGI's): -1 and 0 mean all tokens, as vLLM reads them."""
    value = fields.integer("top_k", -1, 2**31 - 1)
    return None if value is not None and value <= 0 else value


def _generation(fields: _Fields, prompt: str, sampling: Sampling) -> tuple[Generation, bool]:
    """The generation of an OpenAI request, and whether it asked for usage in its stream."""
    stream = bool(fields.boolean("stream"))
    options = _Fields(fields.mapping("stream_options"), "stream_options.")
    include_usage = bool(options.boolean("include_usage"))
    n = fields.integer("n", 1, MAX_CHOICES) or 1
    counts = not stream or include_usage
    return Generation(prompt, sampling, n=n, stream=stream, counts=counts), include_usage


# --- OpenAI chat completions --------------------------------------------------------------------


def _read_chat(document: Mapping[str, object], context: Context) -> TextRequest:
    fields = _Fields(document)
    messages = _messages(document.get("messages"))
    tools = document.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise PayloadError(f"tools must be a list, not {_kind(tools)}")
    logprobs = None
    if fields.boolean("logprobs"):
        logprobs = fields.integer("top_logprobs", 0, MAX_TOP_LOGPROBS) or 0
    elif document.get("top_logprobs") is not None:
        raise PayloadError("top_logprobs needs logprobs: true")
    if context.template is None:
        raise PayloadError(
            f"model {context.model!r} ships no chat template (no tokenizer_config.json with "
            "chat_template in its folder), so its chat messages cannot become a prompt; send a "
            "prompt (completions) or TGI's inputs, or give the model a template (a "
            "tokenizer_config.json in its folder, or SERVE_CHAT_TEMPLATE)"
        )
    prompt = context.template.render(messages, tools)
    generation, include_usage = _generation(
        fields, prompt, _openai_sampling(fields, context, logprobs)
    )
    return TextRequest(generation, fields.text("model"), include_usage=include_usage)


def _messages(value: object) -> list[dict[str, object]]:
    """OpenAI's messages as templates take them: each content one string."""
    if not isinstance(value, list) or not value:
        raise PayloadError("messages must be a non-empty list of {role, content} objects")
    messages = []
    for number, message in enumerate(value):
        if not isinstance(message, dict):
            raise PayloadError(f"messages[{number}] must be an object, not {_kind(message)}")
        role = message.get("role")
        if not isinstance(role, str) or role not in MESSAGE_ROLES:
            raise PayloadError(
                f"messages[{number}].role must be one of {', '.join(sorted(MESSAGE_ROLES))}, "
                f"not {role!r}"
            )
        messages.append({**message, "content": _content(message.get("content"), number)})
    return messages


def _content(content: object, number: int) -> str:
    """A message's content: a string, or a list of text parts (joined, as vLLM joins them)."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise PayloadError(
            f"messages[{number}].content must be a string or a list of parts, not {_kind(content)}"
        )
    texts = []
    for part in content:
        if isinstance(part, dict) and part.get("type", "text") == "text":
            text = part.get("text")
            if isinstance(text, str):
                texts.append(text)
                continue
        kind = part.get("type") if isinstance(part, dict) else _kind(part)
        raise PayloadError(
            f"messages[{number}].content holds a part of type {kind!r}; text-generation models "
            'here take text parts only ({"type": "text", "text": ...})'
        )
    return "\n".join(texts)


def _chat_logprobs(tokens: Sequence[TokenLogprob], top: int | None) -> dict[str, object] | None:
    if top is None:
        return None
    return {
        "content": [
            {
                **_openai_token(t.token, t.logprob),
                "top_logprobs": [_openai_token(text, lp) for text, lp in t.top[:top]],
            }
            for t in tokens
        ],
        "refusal": None,
    }


def _openai_token(text: str, logprob: float) -> dict[str, object]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def _answer_chat(request: TextRequest, result: Result, answering: Answering) -> bytes:
    top = request.generation.sampling.logprobs
    document: dict[str, object] = {
        **_openai_head(answering, "chat.completion"),
        "choices": [
            {
                "index": choice.index,
                "message": {"role": "assistant", "content": choice.text},
                "logprobs": _chat_logprobs(choice.logprobs, top),
                "finish_reason": choice.finish_reason,
            }
            for choice in result.choices
        ],
    }
    return _with_usage(document, result.usage)


def _openai_head(answering: Answering, kind: str) -> dict[str, object]:
    return {
        "id": answering.id,
        "object": kind,
        "created": answering.created,
        "model": answering.model,
    }


def _with_usage(document: dict[str, object], usage: Usage) -> bytes:
    known = usage.known()
    if known is not None:
        document["usage"] = known
    return json.dumps(document).encode()


def _event(document: object) -> bytes:
    return b"data: " + json.dumps(document).encode() + b"\n\n"


async def _stream_chat(
    request: TextRequest, items: AsyncIterator[Item], answering: Answering
) -> AsyncIterator[bytes]:
    head = _openai_head(answering, "chat.completion.chunk")
    nulls: dict[str, object] = {"usage": None} if request.include_usage else {}
    top = request.generation.sampling.logprobs
    started: set[int] = set()
    async for item in items:
        if isinstance(item, Usage):
            yield _usage_event(head, item, request.include_usage)
            continue
        delta: dict[str, object] = {}
        if item.index not in started:
            started.add(item.index)
            delta["role"] = "assistant"
        if item.text or "role" in delta:
            delta["content"] = item.text
        choice = {
            "index": item.index,
            "delta": delta,
            "logprobs": _chat_logprobs(item.logprobs, top) if item.logprobs else None,
            "finish_reason": item.finish_reason,
        }
        yield _event({**head, "choices": [choice], **nulls})
    yield DONE


def _usage_event(head: Mapping[str, object], usage: Usage, asked: bool) -> bytes:
    """stream_options.include_usage: a last chunk with no choices and the usage."""
    known = usage.known()
    if not asked or known is None:
        return b""
    return _event({**head, "choices": [], "usage": known})


def _openai_error(exc: ServeError) -> dict[str, object]:
    kind = "invalid_request_error" if exc.status < 500 else "server_error"
    return {"error": {"message": exc.message, "type": kind, "param": None, "code": None}}


def _error_body(exc: ServeError) -> bytes:
    return json.dumps(_openai_error(exc)).encode()


def _stream_error(exc: ServeError) -> bytes:
    return _event(_openai_error(exc)) + DONE


def _claims_chat(document: Mapping[str, object]) -> bool:
    return "messages" in document


CHAT = RequestSchema(
    "chat",
    "messages",
    _claims_chat,
    _read_chat,
    "chatcmpl",
    _answer_chat,
    _stream_chat,
    _error_body,
    _stream_error,
)


# --- OpenAI completions -------------------------------------------------------------------------


def _read_completion(document: Mapping[str, object], context: Context) -> TextRequest:
    fields = _Fields(document)
    prompt = document.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise PayloadError(
            "prompt must be a string (or a list of one string); send several prompts as "
            "several requests"
        )
    if document.get("suffix"):
        raise PayloadError("suffix (insertion) is not supported here; leave it out")
    logprobs = fields.integer("logprobs", 0, 5)
    generation, include_usage = _generation(
        fields, prompt, _openai_sampling(fields, context, logprobs)
    )
    return TextRequest(
        generation,
        fields.text("model"),
        include_usage=include_usage,
        echo=bool(fields.boolean("echo")),
    )


def _completion_logprobs(
    tokens: Sequence[TokenLogprob], top: int | None, offset: int
) -> dict[str, object] | None:
    """The completions API's (legacy) log probabilities: parallel lists."""
    if top is None:
        return None
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [dict(t.top[:top]) for t in tokens],
        "text_offset": offsets,
    }


def _answer_completion(request: TextRequest, result: Result, answering: Answering) -> bytes:
    prefix = request.generation.prompt if request.echo else ""
    top = request.generation.sampling.logprobs
    document: dict[str, object] = {
        **_openai_head(answering, "text_completion"),
        "choices": [
            {
                "index": choice.index,
                "text": prefix + choice.text,
                "logprobs": _completion_logprobs(choice.logprobs, top, len(prefix)),
                "finish_reason": choice.finish_reason,
            }
            for choice in result.choices
        ],
    }
    return _with_usage(document, result.usage)


async def _stream_completion(
    request: TextRequest, items: AsyncIterator[Item], answering: Answering
) -> AsyncIterator[bytes]:
    head = _openai_head(answering, "text_completion")
    nulls: dict[str, object] = {"usage": None} if request.include_usage else {}
    top = request.generation.sampling.logprobs
    offsets: dict[int, int] = {}
    async for item in items:
        if isinstance(item, Usage):
            yield _usage_event(head, item, request.include_usage)
            continue
        text = item.text
        if item.index not in offsets and request.echo:
            text = request.generation.prompt + text
        offset = offsets.get(item.index, 0)
        offsets[item.index] = offset + len(text)
        choice = {
            "index": item.index,
            "text": text,
            "logprobs": _completion_logprobs(item.logprobs, top, offset) if item.logprobs else None,
            "finish_reason": item.finish_reason,
        }
        yield _event({**head, "choices": [choice], **nulls})
    yield DONE


def _claims_completion(document: Mapping[str, object]) -> bool:
    return "prompt" in document


COMPLETION = RequestSchema(
    "completion",
    "prompt",
    _claims_completion,
    _read_completion,
    "cmpl",
    _answer_completion,
    _stream_completion,
    _error_body,
    _stream_error,
)


# --- Hugging Face TGI ---------------------------------------------------------------------------

# TGI's finish reasons.
_TGI_FINISH = {LENGTH: "length"}
_TGI_STOP = "eos_token"


def _read_tgi(document: Mapping[str, object], context: Context) -> TextRequest:
    fields = _Fields(document)
    prompt = document["inputs"]
    assert isinstance(prompt, str)
    parameters = _Fields(fields.mapping("parameters"), "parameters.")
    best_of = parameters.integer("best_of", 1, 1)
    del best_of  # TGI's best_of beyond 1 (several samples, the best kept) is not offered
    greedy = parameters.boolean("do_sample") is False
    top_n = parameters.integer("top_n_tokens", 0, MAX_TOP_LOGPROBS)
    details = bool(parameters.boolean("details"))
    sampling = Sampling(
        max_tokens=parameters.integer("max_new_tokens", 1, MAX_TOKEN_LIMIT) or context.max_tokens,
        temperature=parameters.number("temperature", 0, 100, above=True),
        top_p=parameters.number("top_p", 0, 1, above=True),
        top_k=_top_k(parameters),
        stop=parameters.stops("stop"),
        seed=parameters.integer("seed", 0, MAX_SEED),
        repetition_penalty=parameters.number("repetition_penalty", 0, 100, above=True),
        frequency_penalty=parameters.number("frequency_penalty", -2, 2),
        logprobs=top_n if top_n is not None else None,
        greedy=greedy,
    )
    stream = bool(fields.boolean("stream"))
    return TextRequest(
        Generation(prompt, sampling, stream=stream, counts=details, finish_reason=details),
        echo=bool(parameters.boolean("return_full_text")),
        details=details,
    )


def _tgi_token(text: str, logprob: TokenLogprob | None, special: bool = False) -> dict[str, object]:
    return {
        "id": (logprob.token_id or 0) if logprob else 0,
        "text": text,
        "logprob": logprob.logprob if logprob else None,
        "special": special,
    }


def _tgi_details(request: TextRequest, finish_reason: str, generated: int) -> dict[str, object]:
    return {
        "finish_reason": _TGI_FINISH.get(finish_reason, _TGI_STOP),
        "generated_tokens": generated,
        "seed": request.generation.sampling.seed,
    }


def _answer_tgi(request: TextRequest, result: Result, _answering: Answering) -> bytes:
    choice = result.choices[0]
    answer: dict[str, object] = {
        "generated_text": (request.generation.prompt if request.echo else "") + choice.text
    }
    if request.details:
        tokens = [_tgi_token(t.token, t) for t in choice.logprobs] or [
            _tgi_token(text, None) for text in choice.pieces
        ]
        generated = result.usage.completion_tokens or len(tokens)
        answer["details"] = {
            **_tgi_details(request, choice.finish_reason, generated),
            "prefill": [],
            "tokens": tokens,
        }
    return json.dumps([answer]).encode()


async def _stream_tgi(
    request: TextRequest, items: AsyncIterator[Item], _answering: Answering
) -> AsyncIterator[bytes]:
    """TGI's events: one per piece of text, then one carrying the whole text (and details)."""
    text = request.generation.prompt if request.echo else ""
    index = 0
    finish_reason = _TGI_STOP
    async for item in items:
        if isinstance(item, Usage):
            generated = item.completion_tokens or index
            details = _tgi_details(request, finish_reason, generated) if request.details else None
            index += 1
            yield _event(
                {
                    "index": index,
                    "token": _tgi_token("", None, special=True),
                    "generated_text": text,
                    "details": details,
                }
            )
            continue
        if item.finish_reason is not None:
            finish_reason = item.finish_reason
        if not item.text:
            continue
        text += item.text
        index += 1
        logprob = item.logprobs[0] if len(item.logprobs) == 1 else None
        yield _event(
            {
                "index": index,
                "token": _tgi_token(item.text, logprob),
                "generated_text": None,
                "details": None,
            }
        )


def _tgi_error(exc: ServeError, started: bool = False) -> dict[str, object]:
    """TGI's error object: a request it refused is `validation`; a generation that failed,
    or a stream that had started, `generation`."""
    kind = "validation" if exc.status < 500 and not started else "generation"
    return {"error": exc.message, "error_type": kind}


def _claims_tgi(document: Mapping[str, object]) -> bool:
    return isinstance(document.get("inputs"), str)


TGI = RequestSchema(
    "tgi",
    "inputs as text",
    _claims_tgi,
    _read_tgi,
    "tgi",
    _answer_tgi,
    _stream_tgi,
    lambda exc: json.dumps(_tgi_error(exc)).encode(),
    lambda exc: _event(_tgi_error(exc, started=True)),
)

SCHEMAS = Schemas()
for _schema in (CHAT, COMPLETION, TGI):
    SCHEMAS.register(_schema)
