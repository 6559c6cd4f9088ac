"""A minimal client for Triton's HTTP frontend on loopback.

Used off the hot path only (readiness at start-up, error explanations), so a
plain http.client connection per call is enough.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
from collections.abc import Mapping


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
