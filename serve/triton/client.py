"""A minimal client for Triton's HTTP frontend on loopback.

Used off the hot path only (readiness at start-up, error explanations), so a
plain http.client connection per call is enough.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import re
from collections.abc import Mapping

from serve.errors import (
    BadRequest,
    GatewayTimeout,
    InsufficientMemory,
    ModelNotFound,
    PayloadError,
    ServeError,
    Unavailable,
)

# How Triton and its backends word running out of CPU or GPU memory.
OUT_OF_MEMORY = re.compile(
    r"out of memory|outofmemory|std::bad_alloc|cannot allocate memory|failed to allocate"
    r"|memoryerror",
    re.IGNORECASE,
)
# Triton answers 500 for a request body its JSON parser cannot read: the caller's mistake.
UNPARSABLE = re.compile(r"^Unable to parse|attempt to access JSON|failed to parse", re.IGNORECASE)
UNKNOWN_MODEL = re.compile(r"unknown model|is not found", re.IGNORECASE)
# Triton's liveness route: answers once its HTTP frontend runs, before any model loads.
LIVE_PATH = "/v2/health/live"


@dataclasses.dataclass(frozen=True)
class TritonReply:
    status: int
    body: bytes
    headers: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class TritonClient:
    port: int
    timeout: float = 65.0

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> TritonReply:
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=timeout or self.timeout
        )
        try:
            connection.request(method, path, body=body, headers=dict(headers or {}))
            response = connection.getresponse()
            return TritonReply(response.status, response.read(), dict(response.getheaders()))
        finally:
            connection.close()

    def is_ready(self, path: str) -> bool:
        """True when `path` (a health or model-ready route) answers 200."""
        try:
            return self.request("GET", path, timeout=2.0).status == 200
        except OSError:
            return False


def error_message(body: bytes) -> str:
    """The message of Triton's `{"error": ...}` answer, or the body as text."""
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", errors="replace") or "Triton failed without a message"


def triton_failure(status: int, body: bytes, about: str = "") -> ServeError:
    """The error a caller gets for Triton's refusal: the one place a Triton status is mapped.

    Triton's own status is often not the one a SageMaker caller can act on: out of
    memory is 507 (SageMaker evicts and retries on multi-model endpoints), a body its
    JSON parser cannot read is the caller's 400, not Triton's 500. `about` prefixes
    the message (which model, doing what).
    """
    message = error_message(body)
    text = f"{about}: {message}" if about else message
    if OUT_OF_MEMORY.search(message):
        return InsufficientMemory(text)
    if UNKNOWN_MODEL.search(message):
        return ModelNotFound(text)
    if status == 500 and UNPARSABLE.search(message):
        return PayloadError(text)
    return _BY_STATUS.get(status, ServeError)(text)


_BY_STATUS: dict[int, type[ServeError]] = {
    400: BadRequest,
    404: ModelNotFound,
    503: Unavailable,
    504: GatewayTimeout,
}
