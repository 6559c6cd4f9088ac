"""Errors a user can act on, and plain-language explanations of AWS failures.

The command line prints these as one line and exits non-zero; a traceback is
for bugs, never for a missing credential or a typo in a region.
"""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)

NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_PROFILE (see `aws configure`), or "
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where an IAM role is attached"
)
NO_REGION = "no AWS region: pass --region or set AWS_DEFAULT_REGION"

# Error codes that mean "who you are" is the problem, not the request.
_IDENTITY_CODES = frozenset(
    {
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
    }
)


class SmtritonError(Exception):
    """A failure the user can fix; its message says what went wrong and what to do."""


class ConfigError(SmtritonError):
    """Options that cannot work together, found before anything is changed."""


def explain_aws_error(error: BaseException) -> str | None:
    """Return a one-line explanation of a botocore error, or None if it is not one."""
    if isinstance(error, NoCredentialsError):
        return NO_CREDENTIALS
    if isinstance(error, PartialCredentialsError):
        return f"incomplete AWS credentials: {error}"
    if isinstance(error, NoRegionError):
        return NO_REGION
    if isinstance(error, ProfileNotFound):
        return f"{error}: check AWS_PROFILE / --profile against ~/.aws/config"
    if isinstance(error, EndpointConnectionError):
        return (
            f"cannot reach {error.kwargs.get('endpoint_url', 'AWS')}: "
            "check the region and your network"
        )
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code = details.get("Code", "Unknown")
        message = details.get("Message", "")
        text = f"{error.operation_name} failed: {code}: {message}".rstrip(": ")
        if code in _IDENTITY_CODES:
            text += " (your AWS credentials are invalid or expired; refresh them)"
        elif code in {"AccessDenied", "AccessDeniedException"}:
            text += " (the IAM identity in use lacks this permission)"
        return text
    if isinstance(error, BotoCoreError):
        return str(error)
    return None
