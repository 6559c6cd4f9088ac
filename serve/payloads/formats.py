"""Payload formats: each one declared object, registered once.

A format is everything about one way a request body is read or an answer is
written (MLServer's codec registry is the model): the media types it reads and
answers with, how nginx routes its requests, the answer its requests get when
Accept leaves the choice, how a body becomes records and outputs become bytes,
and which models it fits. The codecs (codecs/*.py) do the reading and writing;
the adapter (adapter.py) only orchestrates; nginx's routing (serve/front/nginx.py),
the access log's label values (serve/front/access_log.py) and the 415's list of
types all read this registry. A new format is one declaration here.

Triton's SageMaker frontend reads every type but binary+json as KServe v2
JSON. So a body of a bytes type (octet-stream, text/plain, image/*) or of a type
no format claims is a v2 request when it is one (`Route.BYTES`, `Route.V2`);
`; format=raw` on a bytes type keeps even a v2 request as the model's bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Callable, Iterator, Sequence

from serve.errors import NotAcceptable, UnsupportedMediaType, not_v2_nor_bytes
from serve.payloads.batching import Origin
from serve.payloads.body import Body
from serve.payloads.codecs import csv_codec, json_codec, npy_codec, raw_codec
from serve.payloads.limits import PayloadLimits
from serve.payloads.media import MediaType, ranked
from serve.payloads.signature import ModelSignature
from serve.payloads.v2 import Outputs, json_answer
from serve.sagemaker.contract import BINARY_JSON


class Route(enum.Enum):
    """Where nginx sends a request of a format (its config's $native_content)."""

    # v2 or a simple shape, told apart by the body's first bytes (@look_at_body).
    JSON = "json"
    # Triton's binary+json: to Triton.
    BINARY = "binary"
    # A v2 request, or a BYTES input's raw value: to Triton, unless the model has one
    # BYTES input (then the payload service tells them apart).
    BYTES = "bytes"
    # A type no format claims: read only as v2 JSON, as Triton's frontend reads it.
    V2 = "v2"
    # Adapted formats: to the payload service, unread.
    SERVICE = ""


@dataclasses.dataclass(frozen=True)
class Decoding:
    """What a format's decoder gets: the body, its type, the model, the JSON document
    when the adapter has parsed it already (JSON's family), and the limits what the
    body declares is checked against (SERVE_MAX_RECORDS, SERVE_MAX_CHUNKS)."""

    body: bytes
    media: MediaType
    signature: ModelSignature
    limits: PayloadLimits
    document: object = None


# Records, request parameters, and where each record is in the body.
Decoded = tuple[Sequence[object], dict[str, object], Origin]


@dataclasses.dataclass(frozen=True, eq=False)
class PayloadFormat:
    """One payload format: how it is named, routed, read and written."""

    name: str
    # Request Content-Types it reads (parameters aside) and type prefixes ("image/").
    request_types: tuple[str, ...] = ()
    request_prefixes: tuple[str, ...] = ()
    route: Route = Route.SERVICE
    # `format=CHOICE` on one of its request types sends a request to the payload
    # service in this format whatever its body (a simple shape, raw bytes).
    choice: str | None = None
    # The answer its requests get with no Accept, `*/*` or `application/*`; None: itself.
    default_answer: PayloadFormat | None = None
    # Accept types it answers, and the Content-Type of those answers ("" for a format
    # no answer is written in).
    accept_types: tuple[str, ...] = ()
    content_type: str = ""
    # Body -> records; None for a format only answers are written in.
    decode: Callable[[Decoding], Decoded] | None = None
    # Outputs -> answer body; None for answers relayed as Triton wrote them.
    encode: Callable[[Outputs, ModelSignature], bytes] | None = None
    # 415 (UnsupportedMediaType) unless a model can take the body (one BYTES input).
    check_model: Callable[[MediaType, ModelSignature], None] | None = None
    # 406 (NotAcceptable) unless a model's answer can be written in it (one output).
    check_answer: Callable[[ModelSignature], None] | None = None
    # Checks what the body declares (its length, a header's counts, an encoding)
    # against the format's limits before the body is read whole; raises to refuse.
    check_declared: Callable[[Body, MediaType], None] | None = None
    # Written only as a stream (server-sent events).
    streaming: bool = False
    # Triton's own answers (v2 JSON, binary+json): Accept application/json picks v2.
    native: bool = False

    @property
    def answer(self) -> PayloadFormat:
        return self.default_answer or self

    @property
    def v2_first(self) -> bool:
        """Whether a body of this format that is a KServe v2 request is read as one."""
        return self.route in (Route.BYTES, Route.V2)

    def read(
        self,
        media: MediaType,
        body: Body,
        document: object,
        signature: ModelSignature,
        limits: PayloadLimits,
    ) -> Decoded:
        """The records of `body` for `signature`'s model; 415 for a model it does not fit.

        CPU work in proportion to the body: the adapter runs it off the event loop
        for a large one (offload.py)."""
        if self.check_model is not None:
            self.check_model(media, signature)
        if self.decode is None:
            raise UnsupportedMediaType(f"{self.name} bodies are not read here")
        return self.decode(Decoding(body.read(), media, signature, limits, document))

    def check_body(self, body: Body, media: MediaType) -> None:
        """`check_declared`, before anything reads the body whole (the adapter's first step)."""
        if self.check_declared is not None:
            self.check_declared(body, media)

    def write(self, outputs: Outputs, signature: ModelSignature) -> bytes:
        assert self.encode is not None, f"{self.name} answers are relayed, not written"
        return self.encode(outputs, signature)


class Registry:
    """The formats, each registered once; lookups by request type and by Accept type."""

    def __init__(self) -> None:
        self._formats: list[PayloadFormat] = []
        self._requests: dict[str, PayloadFormat] = {}
        self._accepts: dict[str, list[PayloadFormat]] = {}
        self.fallback: PayloadFormat | None = None

    def register(self, payload_format: PayloadFormat, fallback: bool = False) -> PayloadFormat:
        for mime in payload_format.request_types:
            if mime in self._requests:
                raise ValueError(f"{mime} is read by {self._requests[mime].name} already")
            self._requests[mime] = payload_format
        for mime in payload_format.accept_types:
            self._accepts.setdefault(mime, []).append(payload_format)
        self._formats.append(payload_format)
        if fallback:
            self.fallback = payload_format
        return payload_format

    def __iter__(self) -> Iterator[PayloadFormat]:
        return iter(self._formats)

    def request_types(self) -> list[str]:
        return sorted(self._requests)

    def for_request(self, mime: str) -> PayloadFormat | None:
        found = self._requests.get(mime)
        if found is None:
            prefixed = (f for f in self._formats if f.request_prefixes)
            found = next((f for f in prefixed if mime.startswith(f.request_prefixes)), None)
        return found

    def for_accept(self, mime: str) -> list[PayloadFormat]:
        return self._accepts.get(mime, [])


FORMATS = Registry()


def takes_bytes(signature: ModelSignature) -> bool:
    """Whether raw bytes or text can be a model's input: it has one record input, BYTES."""
    specs = signature.record_inputs
    return len(specs) == 1 and specs[0].is_bytes


def _needs_bytes_input(media: MediaType, signature: ModelSignature) -> None:
    if not takes_bytes(signature):
        raise UnsupportedMediaType(
            not_v2_nor_bytes(media.mime, signature.name, signature.describe_inputs())
        )


def _refuse_unclaimed(media: MediaType, signature: ModelSignature) -> None:
    raise unsupported(media)


def _decode_simple(request: Decoding) -> Decoded:
    return (*json_codec.decode(request.document, request.signature), Origin())


def _decode_lines(request: Decoding) -> Decoded:
    records, lines = json_codec.decode_lines(request.body, request.limits)
    return records, {}, Origin(lines)


def _decode_csv(request: Decoding) -> Decoded:
    media = request.media
    records, lines = csv_codec.decode(
        request.body, request.signature, media.params.get("header"), media.charset, request.limits
    )
    return records, {}, Origin(lines)


def _decode_npy(request: Decoding) -> Decoded:
    return npy_codec.decode(request.body, request.signature), {}, Origin()


def _decode_text(request: Decoding) -> Decoded:
    return raw_codec.decode_text(request.body, request.media.charset), {}, Origin()


def _decode_bytes(request: Decoding) -> Decoded:
    return raw_codec.decode_bytes(request.body), {}, Origin()


# --- the formats, answers they default to first

V2 = FORMATS.register(
    PayloadFormat(
        "v2",
        accept_types=("application/json",),
        content_type="application/json",
        encode=lambda outputs, _signature: json_answer(outputs),
        native=True,
    )
)
SIMPLE = FORMATS.register(
    PayloadFormat(
        "simple",
        # curl -d's default type; such bodies have always been read as JSON here.
        request_types=("application/json", "application/x-www-form-urlencoded"),
        route=Route.JSON,
        choice="simple",
        accept_types=("application/json",),
        content_type="application/json",
        decode=_decode_simple,
        encode=json_codec.encode,
    )
)
BINARY = FORMATS.register(
    PayloadFormat(
        "binary",
        request_types=(BINARY_JSON,),
        route=Route.BINARY,
        accept_types=(BINARY_JSON,),
        content_type=BINARY_JSON,
        native=True,
    )
)
_JSON_LINES_TYPES = (
    "application/jsonlines",
    "application/x-jsonlines",
    "application/jsonl",
    "application/x-ndjson",
)
JSONLINES = FORMATS.register(
    PayloadFormat(
        "jsonlines",
        request_types=_JSON_LINES_TYPES,
        accept_types=_JSON_LINES_TYPES,
        content_type="application/jsonlines",
        decode=_decode_lines,
        encode=json_codec.encode_lines,
    )
)
CSV = FORMATS.register(
    PayloadFormat(
        "csv",
        request_types=("text/csv", "application/csv"),
        accept_types=("text/csv", "application/csv", "text/*"),
        content_type="text/csv",
        decode=_decode_csv,
        encode=csv_codec.encode,
    )
)
NPY = FORMATS.register(
    PayloadFormat(
        "npy",
        # tensor/pt: the SageMaker Python SDK's TorchTensorSerializer sends .npy bytes.
        request_types=("application/x-npy", "tensor/pt"),
        accept_types=("application/x-npy", "tensor/pt"),
        content_type="application/x-npy",
        decode=_decode_npy,
        encode=npy_codec.encode,
        check_answer=npy_codec.check,
        check_declared=npy_codec.check_declared,
    )
)
TEXT = FORMATS.register(
    PayloadFormat(
        "text",
        request_types=("text/plain",),
        route=Route.BYTES,
        choice="raw",
        default_answer=SIMPLE,
        accept_types=("text/plain",),
        content_type="text/plain; charset=utf-8",
        decode=_decode_text,
        encode=raw_codec.encode_text,
        check_model=_needs_bytes_input,
        check_answer=raw_codec.check_answer,
    )
)
RAW = FORMATS.register(
    PayloadFormat(
        "raw",
        # file-path/raw-bytes: the SDK's DataSerializer, a file's bytes as they are.
        request_types=("application/octet-stream", "file-path/raw-bytes"),
        request_prefixes=("image/",),
        route=Route.BYTES,
        choice="raw",
        default_answer=SIMPLE,
        decode=_decode_bytes,
        check_model=_needs_bytes_input,
    )
)
EVENTS = FORMATS.register(
    PayloadFormat(
        "events",
        accept_types=("text/event-stream",),
        # As Triton's generate_stream route writes it (NVIDIA's QA checks this spelling).
        content_type="text/event-stream; charset=utf-8",
        streaming=True,
    )
)
# Any type no format claims: a v2 request, as Triton's frontend reads it, or a 415.
OTHER = FORMATS.register(
    PayloadFormat("other", route=Route.V2, default_answer=V2, check_model=_refuse_unclaimed),
    fallback=True,
)

# Types the SDK's other serializers send, which no Triton model takes as they are:
# the 415 says what to send instead.
REFUSED_TYPES = {
    "application/x-npz": "a SciPy sparse matrix (SparseMatrixSerializer); send it dense, "
    "as application/x-npy (NumpySerializer) or text/csv",
    "text/libsvm": "LIBSVM's sparse text (LibSVMSerializer); send the dense rows as text/csv",
    "application/x-recordio-protobuf": "the RecordIO-protobuf of SageMaker's built-in "
    "algorithms (RecordSerializer); send the array as application/x-npy (NumpySerializer)",
}
# What a 406 lists.
ANSWER_NAMES = (
    "application/json (format=simple or format=v2), application/jsonlines, text/csv, "
    "application/x-npy (or tensor/pt), text/plain"
)


def request_format(content_type: str) -> tuple[PayloadFormat, MediaType]:
    """The format a body of `content_type` is read in; OTHER for a type none claims.

    No type is JSON. Any spelling that holds Triton's binary+json type is BINARY:
    text before it is a 400 there (a malformed type), as in NVIDIA's QA, not a 415.
    """
    media = MediaType.parse(content_type)
    if not media.mime:
        return SIMPLE, media
    if BINARY_JSON in content_type.lower():
        return BINARY, media
    return FORMATS.for_request(media.mime) or OTHER, media


def unsupported(media: MediaType) -> UnsupportedMediaType:
    """The 415 of a type no format claims, sent with a body that is not a v2 request."""
    known = f" ({REFUSED_TYPES[media.mime]})" if media.mime in REFUSED_TYPES else ""
    prefixes = [f"{p}*" for f in FORMATS for p in f.request_prefixes]
    return UnsupportedMediaType(
        f"Content-Type {media.mime!r} is not supported{known}, and the body is not a KServe "
        f"v2 request (which any type may carry); send one of: "
        f"{', '.join(FORMATS.request_types() + prefixes)}"
    )


def answer_candidates(
    accept: str, default: PayloadFormat, streaming: bool = False
) -> list[PayloadFormat]:
    """The answers the caller accepts, best first; 406 when there is none.

    `default` is the request's own answer (V2 for a v2 request); it stands for
    `*/*`, a missing Accept, and plain `application/json` on a request in a
    JSON family. Quality values (q) rank, then order.
    """
    if not accept.strip():
        return [default]
    candidates: list[PayloadFormat] = []
    for media in ranked(accept):
        answer = _answer_for(media, default, streaming)
        if answer is not None and answer not in candidates:
            candidates.append(answer)
    if not candidates:
        kinds = "text/event-stream, application/jsonlines" if streaming else ANSWER_NAMES
        raise NotAcceptable(f"Accept {accept!r} names nothing this endpoint writes; accept {kinds}")
    return candidates


def _answer_for(media: MediaType, default: PayloadFormat, streaming: bool) -> PayloadFormat | None:
    writers = FORMATS.for_accept(media.mime)
    if streaming:
        if media.mime in ("*/*", "application/*", "application/json"):
            return JSONLINES
        return next((f for f in writers if f.streaming or f is JSONLINES), None)
    if media.mime in ("*/*", "application/*"):
        return default
    writers = [f for f in writers if not f.streaming]
    if len(writers) > 1:
        # application/json: format=NAME chooses; else the request's own kind of JSON.
        chosen = media.params.get("format")
        named = next((f for f in writers if f.name == chosen), None)
        if named is not None:
            return named
        return next(f for f in writers if f.native == default.native)
    answer = writers[0] if writers else None
    if answer is not None and answer.encode is None and answer is not default:
        return None  # answers relayed as Triton wrote them (binary+json) are never built here
    return answer


def feasible(candidates: list[PayloadFormat], signature: ModelSignature) -> PayloadFormat:
    """The caller's best answer this model can be written in; 406 if none."""
    problem: NotAcceptable | None = None
    for answer in candidates:
        if answer.check_answer is None:
            return answer
        try:
            answer.check_answer(signature)
        except NotAcceptable as exc:
            problem = problem or exc
            continue
        return answer
    assert problem is not None
    raise problem


def nginx_routes() -> dict[str, object]:
    """How nginx routes each request type (its map $content_type $native_content).

    Exact types (a hash lookup), then each format's `format=CHOICE` (to the payload
    service), then each route's types as one pattern; any other type: the fallback's.
    """
    exact = [(mime, f.route.value) for f in FORMATS for mime in f.request_types]
    choices = [(_pattern(f), f.choice) for f in FORMATS if f.choice and f.request_types]
    by_route: dict[Route, list[str]] = {}
    for f in FORMATS:
        if f.request_types or f.request_prefixes:
            by_route.setdefault(f.route, []).append(_pattern(f))
    assert FORMATS.fallback is not None
    return {
        "content_exact": exact,
        "content_choices": choices,
        "content_patterns": [(route.value, "|".join(p)) for route, p in by_route.items()],
        "content_fallback": FORMATS.fallback.route.value,
    }


def _pattern(payload_format: PayloadFormat) -> str:
    """A regular expression matching the format's request types, parameters aside."""
    types = [re.escape(mime) for mime in payload_format.request_types]
    types += [re.escape(prefix) + r"[^;\s]*" for prefix in payload_format.request_prefixes]
    return "|".join(types)
