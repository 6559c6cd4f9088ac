"""Payload formats by Content-Type, and Accept negotiation, without a server."""

from __future__ import annotations

import pytest

from serve.errors import NotAcceptable, PayloadError, UnsupportedMediaType
from serve.front.access_log import KNOWN_CONTENT_TYPES
from serve.payloads import formats
from serve.payloads.body import Body
from serve.payloads.formats import (
    BINARY,
    CSV,
    EVENTS,
    FORMATS,
    JSONLINES,
    NPY,
    OTHER,
    RAW,
    SIMPLE,
    TEXT,
    V2,
    PayloadFormat,
    Registry,
    answer_candidates,
    request_format,
    unsupported,
)
from serve.payloads.media import MediaType


@pytest.mark.parametrize(
    ("content_type", "payload_format"),
    [
        ("", SIMPLE),
        ("application/json; charset=utf-8", SIMPLE),
        ("Application/JSON", SIMPLE),
        ("application/x-www-form-urlencoded", SIMPLE),
        ("application/vnd.sagemaker-triton.binary+json;json-header-size=10", BINARY),
        ("text/csv; header=absent", CSV),
        ("application/jsonlines", JSONLINES),
        ("application/x-npy", NPY),
        ("text/plain", TEXT),
        ("image/webp", RAW),
        ("application/octet-stream", RAW),
        ("application/xml", OTHER),
        # Text before Triton's binary type: its 400 (malformed), not an unknown type.
        (
            "additional-string/application/vnd.sagemaker-triton.binary+json;json-header-size=1",
            BINARY,
        ),
    ],
)
def test_request_formats(content_type: str, payload_format: PayloadFormat) -> None:
    assert request_format(content_type)[0] is payload_format


def test_unknown_content_type_is_415_listing_the_known_ones() -> None:
    _format, media = request_format("application/xml")
    error = unsupported(media)
    assert isinstance(error, UnsupportedMediaType)
    assert "text/csv" in error.message and "image/*" in error.message
    assert "KServe v2" in error.message


@pytest.mark.parametrize(
    ("accept", "default", "best"),
    [
        ("", CSV, CSV),
        ("*/*", CSV, CSV),
        ("application/json", CSV, SIMPLE),
        ("application/json", V2, V2),
        ("application/json", BINARY, V2),
        ("application/json; format=v2", CSV, V2),
        ("application/json;format=simple", V2, SIMPLE),
        ("text/csv;q=0.2, application/x-npy", SIMPLE, NPY),
        ("text/html, application/xml;q=0.9, */*;q=0.8", NPY, NPY),
        ("application/vnd.sagemaker-triton.binary+json", BINARY, BINARY),
        ("application/vnd.sagemaker-triton.binary+json, text/csv", SIMPLE, CSV),
        ("text/*", SIMPLE, CSV),
        ("text/plain", SIMPLE, TEXT),
    ],
)
def test_accept_negotiation(accept: str, default: PayloadFormat, best: PayloadFormat) -> None:
    assert answer_candidates(accept, default)[0] is best


@pytest.mark.parametrize("accept", ["image/png", "text/csv;q=0", "text/event-stream"])
def test_nothing_acceptable_is_406(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        answer_candidates(accept, SIMPLE)


def test_streams_answer_json_lines_or_events() -> None:
    for accept in ("", "*/*", "application/json", "application/x-ndjson"):
        assert answer_candidates(accept, JSONLINES, streaming=True) == [JSONLINES]
    assert answer_candidates("", EVENTS, streaming=True) == [EVENTS]
    assert answer_candidates("text/event-stream", JSONLINES, streaming=True) == [EVENTS]
    with pytest.raises(NotAcceptable, match="text/event-stream"):
        answer_candidates("text/csv", JSONLINES, streaming=True)


def test_every_format_is_declared_once_and_used_everywhere() -> None:
    """The registry is the one list: the access log and nginx's routes read it."""
    types = [mime for f in FORMATS for mime in f.request_types]
    assert len(types) == len(set(types))
    assert set(types) == KNOWN_CONTENT_TYPES
    routes = formats.nginx_routes()
    assert {mime for mime, _ in routes["content_exact"]} == set(types)
    registry = Registry()
    registry.register(PayloadFormat("a", request_types=("x/y",)))
    with pytest.raises(ValueError, match="x/y"):
        registry.register(PayloadFormat("b", request_types=("x/y",)))


def test_a_format_checks_what_the_body_declares_before_it_is_read() -> None:
    """The hook the codecs' bounds fill: it sees the body unread and may refuse it."""

    def refuse(body: Body, media: MediaType) -> None:
        raise PayloadError(f"{body.size} bytes of {media.mime} are too many")

    bounded = PayloadFormat("bounded", request_types=("x/bounded",), check_declared=refuse)
    with pytest.raises(PayloadError, match="3 bytes of x/bounded"):
        bounded.check_body(Body(b"abc"), MediaType.parse("x/bounded"))
    CSV.check_body(Body(b"1,2\n"), MediaType.parse("text/csv"))  # no bound declared yet
