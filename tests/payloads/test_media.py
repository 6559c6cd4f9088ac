"""Content-Type families and Accept negotiation, without a server."""

from __future__ import annotations

import pytest

from serve.errors import NotAcceptable, UnsupportedMediaType
from serve.payloads.media import (
    Answer,
    Family,
    answer_candidates,
    request_family,
    unsupported,
)


@pytest.mark.parametrize(
    ("content_type", "family"),
    [
        ("", Family.JSON),
        ("application/json; charset=utf-8", Family.JSON),
        ("Application/JSON", Family.JSON),
        ("application/x-www-form-urlencoded", Family.JSON),
        ("application/vnd.sagemaker-triton.binary+json;json-header-size=10", Family.BINARY),
        ("text/csv; header=absent", Family.CSV),
        ("application/jsonlines", Family.JSONLINES),
        ("application/x-npy", Family.NPY),
        ("text/plain", Family.TEXT),
        ("image/webp", Family.RAW),
        ("application/octet-stream", Family.RAW),
        ("application/xml", Family.OTHER),
        # Text before Triton's binary type: its 400 (malformed), not an unknown type.
        (
            "additional-string/application/vnd.sagemaker-triton.binary+json;json-header-size=1",
            Family.BINARY,
        ),
    ],
)
def test_request_families(content_type: str, family: Family) -> None:
    assert request_family(content_type)[0] is family


def test_unknown_content_type_is_415_listing_the_known_ones() -> None:
    _family, media = request_family("application/xml")
    assert isinstance(unsupported(media), UnsupportedMediaType)
    assert "text/csv" in unsupported(media).message
    assert "KServe v2" in unsupported(media).message


@pytest.mark.parametrize(
    ("accept", "default", "best"),
    [
        ("", Answer.CSV, Answer.CSV),
        ("*/*", Answer.CSV, Answer.CSV),
        ("application/json", Answer.CSV, Answer.SIMPLE),
        ("application/json", Answer.V2, Answer.V2),
        ("application/json; format=v2", Answer.CSV, Answer.V2),
        ("application/json;format=simple", Answer.V2, Answer.SIMPLE),
        ("text/csv;q=0.2, application/x-npy", Answer.SIMPLE, Answer.NPY),
        ("text/html, application/xml;q=0.9, */*;q=0.8", Answer.NPY, Answer.NPY),
        ("application/vnd.sagemaker-triton.binary+json", Answer.BINARY, Answer.BINARY),
        ("application/vnd.sagemaker-triton.binary+json, text/csv", Answer.SIMPLE, Answer.CSV),
    ],
)
def test_accept_negotiation(accept: str, default: Answer, best: Answer) -> None:
    assert answer_candidates(accept, default)[0] is best


@pytest.mark.parametrize("accept", ["image/png", "text/csv;q=0", "text/event-stream"])
def test_nothing_acceptable_is_406(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        answer_candidates(accept, Answer.SIMPLE)


def test_streams_answer_in_json_lines_or_events() -> None:
    assert answer_candidates("", Answer.JSONLINES, streaming=True) == [Answer.JSONLINES]
    assert answer_candidates("application/json", Answer.JSONLINES, streaming=True) == [
        Answer.JSONLINES
    ]
    assert answer_candidates("text/event-stream", Answer.JSONLINES, streaming=True) == [
        Answer.EVENTS
    ]
    with pytest.raises(NotAcceptable):
        answer_candidates("text/csv", Answer.JSONLINES, streaming=True)
