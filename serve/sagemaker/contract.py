"""Rules of the SageMaker routes that nginx and Python both apply, written once.

nginx routes and refuses most requests before any Python runs, and the payload
service applies the same rules to what reaches it; nginx's config is rendered
with these values (serve/front/nginx.py), so the two cannot drift. Patterns
are written in Python's syntax; `pcre` gives nginx's spelling.
"""

from __future__ import annotations

import re

# Triton's binary+json content type, and its one valid spelling with the JSON
# header's length (nginx and Python match it case-insensitively).
BINARY_JSON = "application/vnd.sagemaker-triton.binary+json"
BINARY_CONTENT_TYPE = re.escape(BINARY_JSON) + r";json-header-size=(?P<size>[0-9]{1,10})(;.*)?"
# Multi-model names nginx sends straight to Triton (SageMaker's own are hashes);
# others go through the payload service, which knows Triton's name for them.
DIRECT_MODEL_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}"
# Model names target_model=NAME can pick on a single-model endpoint: nginx matches
# them and writes them into its config unquoted.
TARGET_MODEL_NAME = r"[A-Za-z0-9][A-Za-z0-9_.~-]{0,254}"

# Content-Encoding a request body may declare: none, or identity. serve's limits count
# the bytes as sent, and Triton would inflate gzip or deflate without any bound.
IDENTITY_ENCODING = r"\s*(?:identity\s*)?"


# The headers of SageMaker's stateful sessions (InvokeEndpoint's SessionId,
# NewSessionId and ClosedSessionId); nginx routes on the first.
SESSION_HEADER = "X-Amzn-SageMaker-Session-Id"
NEW_SESSION_HEADER = "X-Amzn-SageMaker-New-Session-Id"
CLOSED_SESSION_HEADER = "X-Amzn-SageMaker-Closed-Session-Id"


# InvokeEndpointWithBidirectionalStream's WebSocket route on the public port.
BIDIRECTIONAL_ROUTE = "/invocations-bidirectional-stream"


def nginx_variable(header: str) -> str:
    """nginx's variable for a request header: `$http_` and the name, lower, `-` as `_`."""
    return "$http_" + header.lower().replace("-", "_")


def pcre(pattern: str) -> str:
    """A pattern of this module as nginx (PCRE) spells it."""
    return pattern.replace("(?P<", "(?<")


def full_match(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """A pattern of this module, compiled for Python to match a whole string.

    `\\Z`, not `$`: `$` also matches before a final line break, so "name\\n" would
    pass for "name" (and a header value ending in one would end a header block).
    """
    return re.compile(f"\\A(?:{pattern})\\Z", flags)


# What serve writes as an answer's header: a token for the name, and visible US-ASCII
# with spaces between for the value (RFC 9110's field-value, without obs-text or tabs),
# so no value from a model or from Triton can end a line, or the header block, early.
HEADER_NAME = full_match(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
HEADER_VALUE = full_match(r"([\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?)?")
