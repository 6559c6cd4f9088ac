"""Triton's binary+json requests: a JSON header, then tensors' bytes.

The content type says how long the header is (`json-header-size=N`); the
body goes to Triton as sent, so all serve reads of it is that header, checked
to be there and to be JSON before Triton is asked (Triton's own error for a
bad header is less clear).
"""

from __future__ import annotations

import re

from serve.errors import MALFORMED_BINARY_TYPE, PayloadError
from serve.payloads.body import Body
from serve.payloads.json_elements import InvalidJson, parse_json
from serve.sagemaker.contract import BINARY_CONTENT_TYPE, full_match

BINARY_HEADER = full_match(BINARY_CONTENT_TYPE, re.IGNORECASE)


def header_size(content_type: str, body: Body) -> int:
    """The JSON header's length, checked against the body and read as JSON; 400 if not."""
    match = BINARY_HEADER.match(content_type)
    if match is None or int(match.group("size")) > body.size:
        raise PayloadError(MALFORMED_BINARY_TYPE)
    size = int(match.group("size"))
    if size:
        try:
            parse_json(body.head(size))
        except InvalidJson as exc:
            raise PayloadError(exc.describe("the request body")) from None
    return size
