"""Errors `serve` reports to people, each with the HTTP status it maps to.

Requests get `{"error": message}` with `status`; at start-up the message is
printed and `serve` exits non-zero. Messages say what was wrong and what to do.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path


class ServeError(Exception):
    """A failure a user can act on; subclasses name the status it is answered with."""

    status: int = 500
    # The answer's body when a request schema words its errors itself (OpenAI's error
    # object, serve/payloads/llm/schemas.py); None: `{"error": message}`.
    body: bytes | None = None

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(ServeError):
    """The request itself is wrong (a field, a parameter, a token)."""

    status = 400


class ArtifactError(BadRequest):
    """A model artifact (archive, folder, config, environment) is unusable."""


class PayloadError(BadRequest):
    """The body does not fit the model's inputs (or cannot be read at all)."""


class PayloadTooLarge(ServeError):
    """A body holds more than a declared limit allows (its message names the setting)."""

    status = 413


class NotFound(ServeError):
    status = 404


class ModelNotFound(NotFound):
    """A request names a model this endpoint does not have loaded."""


class SessionNotOpen(BadRequest):
    """A request names a session this container does not hold."""


class MethodNotAllowed(ServeError):
    status = 405


class NotAcceptable(ServeError):
    """Accept names nothing the endpoint can write for this model."""

    status = 406


class ModelAlreadyLoaded(ServeError):
    """SageMaker's multi-model contract answers a second load of one name with 409."""

    status = 409


class SequenceInUse(ServeError):
    """A plain request names a Triton sequence a session or stream of this endpoint holds."""

    status = 409


class Gone(ServeError):
    """What a request relied on is no longer there (a session whose state Triton forgot)."""

    status = 410


class UnsupportedMediaType(ServeError):
    status = 415


class TooManySessions(ServeError):
    """SERVE_MAX_SESSIONS sessions are open already."""

    status = 429


class ConfigError(ServeError):
    """The container's configuration (environment variables) is invalid."""


class ModelMisconfigured(ServeError):
    """A model's own configuration or answer is wrong: the caller cannot fix it (500)."""


class BadGateway(ServeError):
    """Triton answered something that is not what its protocol promises."""

    status = 502


class Unavailable(ServeError):
    """Triton is not answering, or still holds what a request needs: try again later."""

    status = 503


class GatewayTimeout(ServeError):
    status = 504


class InsufficientMemory(ServeError):
    """CPU or GPU memory ran out; on multi-model endpoints SageMaker evicts and retries."""

    status = 507


class InsufficientStorage(ServeError):
    """A file system ran out of space; on multi-model endpoints SageMaker evicts and retries."""

    status = 507


def is_out_of_space(exc: BaseException) -> bool:
    """True for the file system errors a full disk (or a spent quota) raises."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def out_of_space(path: Path, doing: str) -> InsufficientStorage:
    """The 507 for a full file system: what filled it, where, and its size and free space."""
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    usage = shutil.disk_usage(folder)
    return InsufficientStorage(
        f"no space left on the file system of {path} while {doing}; it has {usage.free} of "
        f"{usage.total} bytes free: free space there, or unload other models"
    )


SESSIONS_SINGLE_MODEL = (
    "stateful sessions (X-Amzn-SageMaker-Session-Id) are served on single-model endpoints; "
    "on a multi-model endpoint leave SessionId out"
)
# Refusals nginx writes itself and the payload service repeats for what reaches it.
POST_ONLY = "this route accepts POST only"
GET_ONLY = "this route accepts GET only"
EMPTY_BODY = "the request body is empty; send an inference request"
ENCODED_BODY = (
    "Content-Encoding is not accepted: the body limit counts the bytes as sent, and a "
    "compressed body could inflate far past it; send the body uncompressed (no "
    "Content-Encoding, or identity)"
)
MALFORMED_BINARY_TYPE = (
    "malformed Content-Type: binary requests need exactly "
    "application/vnd.sagemaker-triton.binary+json;json-header-size=N, with N the "
    "length of the JSON header in bytes"
)


def read_as_v2(content_type: str, model: str | None) -> str:
    """Added to Triton's refusal of a body read as KServe v2 for its content alone.

    `model`: a model that could have taken the bytes instead (one BYTES input).
    """
    note = (
        f"serve read this {content_type} body as a KServe v2 request, as Triton's "
        "SageMaker frontend reads any Content-Type but binary+json"
    )
    if model is not None:
        note += (
            f"; to give model {model!r} these bytes as its input instead, send "
            f"Content-Type: {content_type}; format=raw"
        )
    return note


def almost_v2(content_type: str, choice: str) -> str:
    """A body of a bytes type shaped like a KServe v2 request that is not one."""
    return (
        f"this {content_type} body is shaped like a KServe v2 request (a list of input "
        "objects) but is not one: each input needs its name. Name them to send a v2 request, "
        "send records as application/json, or send "
        f"Content-Type: {content_type}; format={choice} to give a model with one BYTES input "
        "these bytes as they are"
    )


def not_v2_nor_bytes(content_type: str, model: str, inputs: str) -> str:
    """A bytes type (octet-stream, text/plain, image/*) whose body is not a v2 request,
    for a model without one BYTES input to take it."""
    return (
        f"a {content_type} body is read as a KServe v2 request (a JSON object whose inputs "
        f"name tensors), or as the bytes of a model's one BYTES input; this one is not a v2 "
        f"request, and model {model!r} takes {inputs}: send a v2 request, or "
        "application/json, text/csv or application/x-npy"
    )


def invocation_timed_out(seconds: float) -> str:
    """The error of an invocation the model did not answer in time, nginx's and Python's alike."""
    return (
        f"the model did not answer within {seconds:g} s (SAGEMAKER_MODEL_SERVER_TIMEOUT); "
        "raise it if your model needs longer"
    )


# nginx's name for a request head larger than its buffers; HTTP's is 431.
NGINX_HEADER_TOO_LARGE = 494


def front_errors(
    max_body_bytes: int, public_routes: str, max_body_set_by: str = "SERVE_MAX_BODY_BYTES"
) -> dict[int, tuple[int, str]]:
    """The answers nginx writes itself, by the status nginx gives them: (status sent, message).

    nginx answers malformed requests, its limits and an internal service that
    did not answer before any Python runs; the front's config turns each into
    the same `{"error": ...}` body as every other answer. A message must not
    hold `$` (nginx would read a variable).
    """
    return {
        400: (400, "the request is not valid HTTP/1.1 (its request line, a header, or its chunks)"),
        404: (404, f"no such route; this endpoint answers {public_routes}"),
        405: (405, "this method is not allowed on this route"),
        411: (411, "this request needs a Content-Length or a chunked body"),
        413: (413, _too_large(max_body_bytes, max_body_set_by)),
        414: (414, "the request URI is longer than the front accepts (8 KiB)"),
        NGINX_HEADER_TOO_LARGE: (
            431,
            "the request's headers are larger than the front accepts (8 KiB a line, 32 KiB in all)",
        ),
        500: (500, "internal error in the front; see the container log"),
        501: (501, "this Transfer-Encoding is not supported; send chunked or a Content-Length"),
        502: (502, "an internal service of the front did not answer; see the container log"),
        503: (503, "the model server is not available; see the container log"),
        504: (504, "an internal service of the front did not answer in time"),
        505: (505, "this HTTP version is not supported; use HTTP/1.1"),
    }


def _too_large(max_body_bytes: int, set_by: str) -> str:
    """The 413's message: the limit, the variable behind it, and how to change it."""
    change = "SERVE_MAX_BODY_BYTES sets another limit"
    if set_by == "SERVE_MAX_BODY_BYTES":
        return f"the request body is larger than {max_body_bytes} bytes; {change}"
    return f"the request body is larger than {max_body_bytes} bytes ({set_by}); {change}"
