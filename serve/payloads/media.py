"""Content types and Accept: which codec reads a body, which encoding answers it.

The registry is keyed by media type (parameters aside); a type it does not
hold is a 415 that lists the types it does. Accept is negotiated by quality
(q), then by order; a list with nothing this endpoint can produce is a 406.
"""

from __future__ import annotations

import dataclasses
import enum

from serve.errors import NotAcceptable, UnsupportedMediaType
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
    Answer.EVENTS: "text/event-stream",
}
DEFAULT_ANSWERS = {
    Family.JSON: Answer.SIMPLE,
    Family.BINARY: Answer.BINARY,
    Family.JSONLINES: Answer.JSONLINES,
    Family.CSV: Answer.CSV,
    Family.NPY: Answer.NPY,
    Family.TEXT: Answer.SIMPLE,
    Family.RAW: Answer.SIMPLE,
}
ANSWER_NAMES = (
    "application/json (format=simple or format=v2), application/jsonlines, text/csv, "
    "application/x-npy (or tensor/pt), text/plain"
)


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
    media = MediaType.parse(content_type)
    if not media.mime:
        return Family.JSON, media
    family = REQUEST_TYPES.get(media.mime)
    if family is None and media.mime.startswith(RAW_PREFIXES):
        family = Family.RAW
    if family is None:
        known = f" ({REFUSED_TYPES[media.mime]})" if media.mime in REFUSED_TYPES else ""
        raise UnsupportedMediaType(
            f"Content-Type {media.mime!r} is not supported{known}; send one of: "
            f"{', '.join(sorted(REQUEST_TYPES))}, image/*"
        )
    return family, media


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
