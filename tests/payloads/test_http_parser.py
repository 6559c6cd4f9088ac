"""serve/payloads/http_parser.py: the one HTTP/1.1 reader of the payload service's two sides.

Fed as TCP delivers them (a byte at a time here, the worst split), requests and
answers come out whole; broken framing is refused, not guessed at.
"""

from __future__ import annotations

import pytest

from serve.payloads.http_parser import (
    HEAD_LIMIT,
    Head,
    HeadTooLarge,
    MalformedMessage,
    RequestReader,
    ResponseReader,
)


class Owner:
    def __init__(self) -> None:
        self.messages: list[tuple[Head, list[bytes], bool]] = []
        self._body: list[bytes] = []
        self._head: Head | None = None

    def message_head(self, head: Head) -> None:
        self._head, self._body = head, []

    def message_body(self, data: bytes) -> None:
        self._body.append(data)

    def message_end(self, keep_alive: bool) -> None:
        assert self._head is not None
        self.messages.append((self._head, self._body, keep_alive))


def feed_bytewise(reader: RequestReader | ResponseReader, data: bytes) -> None:
    for index in range(len(data)):
        reader.feed(data[index : index + 1])


def test_requests_one_after_another_split_anywhere() -> None:
    owner = Owner()
    first = (
        b"POST /_serve/invocations HTTP/1.1\r\nHost: x\r\nX-Serve-Model: a%2Fb\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )
    second = b"POST /models/m/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n[]"
    feed_bytewise(RequestReader(owner), first + second)
    (head, body, keep_alive), (head2, body2, _) = owner.messages
    assert (head.method, head.target, head.content_length) == ("POST", "/_serve/invocations", 5)
    assert head.headers["x-serve-model"] == "a%2Fb"
    assert b"".join(body) == b"hello" and keep_alive
    assert (head2.target, b"".join(body2)) == ("/models/m/invoke", b"[]")


def test_a_chunked_request_body_arrives_chunk_by_chunk() -> None:
    owner = Owner()
    request = (
        b"POST /_serve/invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n"
    )
    feed_bytewise(RequestReader(owner), request)
    ((head, body, _),) = owner.messages
    assert head.content_length is None
    assert body == [b"abc", b"defg"]


def test_an_answer_in_chunks_is_delivered_one_whole_chunk_at_a_time() -> None:
    owner = Owner()
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"d\r\ndata: {...}\n\n\r\n0\r\n\r\n"
    )
    feed_bytewise(ResponseReader(owner), answer)
    ((head, body, keep_alive),) = owner.messages
    assert head.status == 200 and body == [b"data: {...}\n\n"] and keep_alive


def test_connection_close_is_not_kept_alive() -> None:
    owner = Owner()
    ResponseReader(owner).feed(
        b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
    )
    ((head, body, keep_alive),) = owner.messages
    assert head.status == 400 and body == [b"{}"] and not keep_alive


@pytest.mark.parametrize(
    "data",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_broken_requests_are_refused(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        RequestReader(Owner()).feed(data)


def test_a_head_past_the_limit_is_refused() -> None:
    reader = RequestReader(Owner())
    reader.feed(b"POST / HTTP/1.1\r\n")
    with pytest.raises(HeadTooLarge):
        for _ in range(HEAD_LIMIT // 65536 + 2):
            reader.feed(b"X-Filler: " + b"a" * 65536 + b"\r\n")
