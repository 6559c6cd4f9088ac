"""Content types and Accept: which codec reads a body, which encoding answers it.

The registry is keyed by media type (parameters aside); a type it does not
hold is a 415 that lists the types it does. Accept is negotiated by quality
(q), then by order; a list with nothing this endpoint can produce is a 406.
"""

from __future__ import annotations

import dataclasses
import enum
import re

from serve.errors import NotAcceptable, UnsupportedMediaType
from serve.payloads.signature import ModelSignature
from serve.sagemaker.contract import BINARY_JSON


class Family(enum.Enum):
    """How a request body is read."""

    JSON = "json"  # KServe v2 JSON or a simple shape, told apart by the body
    BINARY = "binary"  # Triton's binary+json framing: always v2
    JSONLINES = "jsonlines"
    CSV = "csv"
    NPY = "npy"
    TEXT = "text"
    RAW = "raw"
    # A type no format claims: read only as KServe v2 JSON, as Triton's frontend reads it.
    OTHER = "other"


# Families whose body, when it is a KServe v2 request, is read as one (Triton's
# SageMaker frontend reads every type but binary+json as v2 JSON); any other body
# is theirs (raw bytes, text) or, for OTHER, refused. `; format=raw` on the type
# keeps even a v2 request as the model's bytes.
V2_FIRST = frozenset({Family.TEXT, Family.RAW, Family.OTHER})
RAW_CHOICE = "raw"


class Answer(enum.Enum):
    """How an answer is written."""

    V2 = "v2"  # Triton's v2 JSON (relayed, or built from tensors)
    BINARY = "binary"  # relayed as Triton wrote it
    SIMPLE = "simple"  # {"predictions": [...]}
    JSONLINES = "jsonlines"
    CSV = "csv"
    NPY = "npy"
    TEXT = "text"
    EVENTS = "events"  # streams only

    @property
    def content_type(self) -> str:
        return ANSWER_CONTENT_TYPES[self]


REQUEST_TYPES: dict[str, Family] = {
    "application/json": Family.JSON,
    # curl -d's default; such bodies have always been read as JSON here.
    "application/x-www-form-urlencoded": Family.JSON,
    BINARY_JSON: Family.BINARY,
    "application/jsonlines": Family.JSONLINES,
    "application/x-jsonlines": Family.JSONLINES,
    "application/jsonl": Family.JSONLINES,
    "application/x-ndjson": Family.JSONLINES,
    "text/csv": Family.CSV,
    "application/csv": Family.CSV,
    "application/x-npy": Family.NPY,
    # The SageMaker Python SDK's TorchTensorSerializer: the tensor as .npy.
    "tensor/pt": Family.NPY,
    "text/plain": Family.TEXT,
    "application/octet-stream": Family.RAW,
    # The SDK's DataSerializer: a file's bytes as they are.
    "file-path/raw-bytes": Family.RAW,
}
# Types the SDK's other serializers send, which no Triton model takes as they are: the
# 415 says what to send instead.
REFUSED_TYPES = {
    "application/x-npz": "a SciPy sparse matrix (SparseMatrixSerializer); send it dense, "
    "as application/x-npy (NumpySerializer) or text/csv",
    "text/libsvm": "LIBSVM's sparse text (LibSVMSerializer); send the dense rows as text/csv",
    "application/x-recordio-protobuf": "the RecordIO-protobuf of SageMaker's built-in "
    "algorithms (RecordSerializer); send the array as application/x-npy (NumpySerializer)",
}
# Any image/* type is raw bytes for a model with one BYTES input.
RAW_PREFIXES = ("image/",)

ACCEPT_TYPES: dict[str, Answer | None] = {
    "application/json": None,  # the request's JSON family; format=v2|simple chooses
    "application/jsonlines": Answer.JSONLINES,
    "application/x-jsonlines": Answer.JSONLINES,
    "application/jsonl": Answer.JSONLINES,
    "application/x-ndjson": Answer.JSONLINES,
    "text/csv": Answer.CSV,
    "application/csv": Answer.CSV,
    "text/*": Answer.CSV,
    "application/x-npy": Answer.NPY,
    # The SDK's TorchTensorDeserializer reads .npy.
    "tensor/pt": Answer.NPY,
    "text/plain": Answer.TEXT,
    BINARY_JSON: Answer.BINARY,
    "text/event-stream": Answer.EVENTS,
}
ANSWER_CONTENT_TYPES = {
    Answer.V2: "application/json",
    Answer.BINARY: BINARY_JSON,
    Answer.SIMPLE: "application/json",
    Answer.JSONLINES: "application/jsonlines",
    Answer.CSV: "text/csv",
    Answer.NPY: "application/x-npy",
    Answer.TEXT: "text/plain; charset=utf-8",
    # As Triton's generate_stream route writes it (NVIDIA's QA checks this spelling).
    Answer.EVENTS: "text/event-stream; charset=utf-8",
}
DEFAULT_ANSWERS = {
    Family.JSON: Answer.SIMPLE,
    Family.BINARY: Answer.BINARY,
    Family.JSONLINES: Answer.JSONLINES,
    Family.CSV: Answer.CSV,
    Family.NPY: Answer.NPY,
    Family.TEXT: Answer.SIMPLE,
    Family.RAW: Answer.SIMPLE,
    Family.OTHER: Answer.V2,
}
ANSWER_NAMES = (
    "application/json (format=simple or format=v2), application/jsonlines, text/csv, "
    "application/x-npy (or tensor/pt), text/plain"
)


def nginx_type_pattern(families: frozenset[Family]) -> str:
    """A pattern matching the media types of `families` (no parameters), for nginx's map."""
    mimes = sorted(re.escape(mime) for mime, family in REQUEST_TYPES.items() if family in families)
    if Family.RAW in families:
        mimes += [re.escape(prefix) + r"[^;\s]*" for prefix in RAW_PREFIXES]
    return "|".join(mimes)


# The types whose bodies may be a model's raw input (or a v2 request), and those of the
# adapted formats: nginx routes both by them (serve/front/nginx.py).
BYTES_TYPES = nginx_type_pattern(frozenset({Family.TEXT, Family.RAW}))
ADAPTED_TYPES = nginx_type_pattern(frozenset({Family.JSONLINES, Family.CSV, Family.NPY}))


@dataclasses.dataclass(frozen=True)
class MediaType:
    mime: str
    params: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> MediaType:
        mime, _, rest = text.partition(";")
        params = {}
        for part in rest.split(";"):
            key, sep, value = part.partition("=")
            if sep:
                params[key.strip().lower()] = value.strip().strip('"')
        return cls(mime.strip().lower(), params)

    @property
    def charset(self) -> str:
        charset = self.params.get("charset", "utf-8")
        try:
            "".encode(charset)
        except LookupError:
            return "utf-8"
        return charset


def request_family(content_type: str) -> tuple[Family, MediaType]:
    """How the body of `content_type` is read; a type no format claims is Family.OTHER.

    Any spelling that holds Triton's binary+json type is BINARY: text before it
    is a 400 there (`malformed Content-Type`), as in NVIDIA's QA, not a 415.
    """
    media = MediaType.parse(content_type)
    if not media.mime:
        return Family.JSON, media
    if BINARY_JSON in content_type.lower():
        return Family.BINARY, media
    family = REQUEST_TYPES.get(media.mime)
    if family is None and media.mime.startswith(RAW_PREFIXES):
        family = Family.RAW
    return family or Family.OTHER, media


def takes_bytes(signature: ModelSignature) -> bool:
    """Whether raw bytes or text can be a model's input: it has one record input, BYTES."""
    specs = signature.record_inputs
    return len(specs) == 1 and specs[0].is_bytes


def unsupported(media: MediaType) -> UnsupportedMediaType:
    """The 415 of a type no format claims, sent with a body that is not a v2 request."""
    known = f" ({REFUSED_TYPES[media.mime]})" if media.mime in REFUSED_TYPES else ""
    return UnsupportedMediaType(
        f"Content-Type {media.mime!r} is not supported{known}, and the body is not a KServe "
        f"v2 request (which any type may carry); send one of: "
        f"{', '.join(sorted(REQUEST_TYPES))}, image/*"
    )


def answer_candidates(accept: str, default: Answer, streaming: bool = False) -> list[Answer]:
    """The answers the caller accepts, best first; 406 when there is none.

    `default` is the request family's own answer (V2 for a v2 request); it
    stands for `*/*`, a missing Accept, and plain `application/json` on a
    request in a JSON family.
    """
    if not accept.strip():
        return [default]
    ranked = _ranked(accept)
    candidates: list[Answer] = []
    for media in ranked:
        answer = _answer_for(media, default, streaming)
        if answer is not None and answer not in candidates:
            candidates.append(answer)
    if not candidates:
        kinds = "text/event-stream, application/jsonlines" if streaming else ANSWER_NAMES
        raise NotAcceptable(f"Accept {accept!r} names nothing this endpoint writes; accept {kinds}")
    return candidates


def _answer_for(media: MediaType, default: Answer, streaming: bool) -> Answer | None:
    if streaming:
        if media.mime == "text/event-stream":
            return Answer.EVENTS
        if media.mime in ("*/*", "application/*", "application/json") or (
            ACCEPT_TYPES.get(media.mime) is Answer.JSONLINES
        ):
            return Answer.JSONLINES
        return None
    if media.mime in ("*/*", "application/*"):
        return default
    if media.mime == "application/json":
        chosen = media.params.get("format")
        if chosen == "v2":
            return Answer.V2
        if chosen == "simple":
            return Answer.SIMPLE
        return Answer.V2 if default in (Answer.V2, Answer.BINARY) else Answer.SIMPLE
    answer = ACCEPT_TYPES.get(media.mime)
    if answer is Answer.BINARY and default is not Answer.BINARY:
        return None  # binary answers are relayed, never built here
    if answer is Answer.EVENTS:
        return None
    return answer


def _ranked(accept: str) -> list[MediaType]:
    entries = []
    for position, part in enumerate(accept.split(",")):
        if not part.strip():
            continue
        media = MediaType.parse(part)
        try:
            quality = float(media.params.get("q", "1"))
        except ValueError:
            quality = 1.0
        if quality > 0:
            entries.append((-quality, position, media))
    return [media for _, _, media in sorted(entries, key=lambda e: (e[0], e[1]))]
