"""HTTP/1.1 messages in and out of the payload service, read by one well-kept parser.

Both of the service's connections speak HTTP/1.1: nginx's requests to it, and
Triton's answers to its requests. Both are read here with httptools (the
bindings of llhttp, Node.js's parser, in C), which checks framing, lengths and
chunked encoding the way a public server must, instead of hand-written code.
A reader is fed bytes as they arrive and calls its owner back: once when a
message's head is complete, for each piece of its body, and when it ends.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import httptools

# A request or answer head (request line or status line, and headers) past this
# many bytes is refused: nginx's own heads are far smaller.
HEAD_LIMIT = 1 << 20


class MalformedMessage(ValueError):
    """The bytes are not HTTP/1.1 (what is wrong in the message says why)."""


class HeadTooLarge(MalformedMessage):
    """The head is longer than HEAD_LIMIT."""


@dataclasses.dataclass(frozen=True)
class Head:
    """A request's or an answer's head. Header names in lower case."""

    headers: dict[str, str]
    # Requests: the method and target; answers: the status.
    method: str = ""
    target: str = ""
    status: int = 0
    # The body's length, where Content-Length gives it (None when chunked or absent).
    content_length: int | None = None


class MessageOwner(Protocol):
    """What a reader calls back, in this order for each message."""

    def message_head(self, head: Head) -> None: ...

    def message_body(self, data: bytes) -> None:
        """A piece of the body; with chunked encoding, one whole chunk."""

    def message_end(self, keep_alive: bool) -> None: ...


class _Reader:
    """Feeds one connection's bytes to httptools and turns its callbacks into the owner's."""

    _parser: httptools.HttpRequestParser | httptools.HttpResponseParser

    def __init__(self, owner: MessageOwner):
        self._owner = owner
        self._url = b""
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._chunk: list[bytes] = []
        self._chunked = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Parse `data`; MalformedMessage when it breaks HTTP/1.1 (or the owner raised it)."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, MalformedMessage):
                raise exc.__context__ from None
            raise
        except httptools.HttpParserError as exc:
            raise MalformedMessage(str(exc) or type(exc).__name__) from None

    # -- httptools' callbacks ---------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._head_bytes = 0
        self._chunk = []
        self._chunked = False

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1").strip()
        # Repeated headers are joined, as RFC 9110 lets a recipient do.
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def on_headers_complete(self) -> None:
        headers = self._headers
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        content_length = None if self._chunked or length is None else int(length)
        self._owner.message_head(self._head(headers, content_length))

    def on_body(self, body: bytes) -> None:
        if self._chunked:
            self._chunk.append(body)
        else:
            self._owner.message_body(body)

    def on_chunk_complete(self) -> None:
        if self._chunk:
            chunk, self._chunk = b"".join(self._chunk), []
            self._owner.message_body(chunk)

    def on_message_complete(self) -> None:
        self._owner.message_end(self._parser.should_keep_alive())

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > HEAD_LIMIT:
            raise HeadTooLarge(f"the head is longer than {HEAD_LIMIT} bytes")

    def _head(self, headers: dict[str, str], content_length: int | None) -> Head:
        raise NotImplementedError


class RequestReader(_Reader):
    """Requests, one after another on a kept-alive connection (nginx's to the service)."""

    def __init__(self, owner: MessageOwner):
        super().__init__(owner)
        self._parser = self._requests = httptools.HttpRequestParser(self)

    def _head(self, headers: dict[str, str], content_length: int | None) -> Head:
        return Head(
            headers,
            method=self._requests.get_method().decode("latin-1"),
            target=self._url.decode("latin-1"),
            content_length=content_length,
        )


class ResponseReader(_Reader):
    """Answers, one for each request sent (Triton's to the service)."""

    def __init__(self, owner: MessageOwner):
        super().__init__(owner)
        self._parser = self._responses = httptools.HttpResponseParser(self)

    def _head(self, headers: dict[str, str], content_length: int | None) -> Head:
        status = self._responses.get_status_code()
        return Head(headers, status=status, content_length=content_length)
