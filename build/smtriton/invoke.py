"""`smtriton invoke`: call an endpoint the way an application would.

The response body goes to stdout (or --output) byte for byte, so it can be
piped; everything else (content type, errors) goes to stderr. A container
4xx/5xx arrives as SageMaker's ModelError, shown with the container's status
and message, which is where this image puts what was wrong.

An inference component is named with --inference-component. One scaled to
zero answers its first request with "no capacity" while SageMaker starts a
copy (minutes); --wait-for-capacity retries until one serves.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from botocore.exceptions import ClientError

from smtriton.aws import AwsOptions, Client, add_aws_arguments, client, open_session
from smtriton.components import COMPONENT_NAME_PATTERN
from smtriton.endpoints import ENDPOINT_NAME_PATTERN
from smtriton.errors import ConfigError, SmtritonError
from smtriton.progress import Progress, format_elapsed

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # InvokeEndpoint's request and response cap
MAX_CUSTOM_ATTRIBUTES = 1024
# How SageMaker says a component has no copy to take the request (scaled to zero).
NO_CAPACITY = "has no capacity"
CAPACITY_POLL_S = 5.0


@dataclass(frozen=True)
class InvokeConfig:
    aws: AwsOptions
    endpoint_name: str
    body: bytes
    content_type: str = "application/json"
    accept: str | None = None
    target_model: str | None = None
    """Tarball path relative to the multi-model prefix, e.g. ncf_food.tar.gz."""
    custom_attributes: str | None = None
    stream: bool = False
    output: Path | None = None
    component: str | None = None
    """The inference component to call (InferenceComponentName)."""
    wait_for_capacity_s: float = 0.0
    """Retry this long while the component has no copy (scaled to zero)."""
    capacity_poll_s: float = CAPACITY_POLL_S

    def __post_init__(self) -> None:
        if not ENDPOINT_NAME_PATTERN.match(self.endpoint_name):
            raise ConfigError(f"invalid endpoint name {self.endpoint_name!r}")
        if self.component is not None and not COMPONENT_NAME_PATTERN.match(self.component):
            raise ConfigError(f"invalid inference component name {self.component!r}")
        if self.component is not None and self.target_model:
            raise ConfigError(
                "an inference component serves one model repository: drop --target-model"
            )
        if self.wait_for_capacity_s < 0 or self.capacity_poll_s <= 0:
            raise ConfigError("--wait-for-capacity cannot be negative")
        if len(self.body) > MAX_PAYLOAD_BYTES:
            raise ConfigError(
                f"the body is {len(self.body)} bytes; InvokeEndpoint takes at most "
                f"{MAX_PAYLOAD_BYTES} (use asynchronous inference or batch transform for more)"
            )
        if self.stream and self.target_model:
            raise ConfigError(
                "streaming does not take --target-model: InvokeEndpointWithResponseStream "
                "serves single-model endpoints only"
            )
        if self.custom_attributes is not None and (
            len(self.custom_attributes) > MAX_CUSTOM_ATTRIBUTES
            or not all(33 <= ord(c) <= 126 or c == " " for c in self.custom_attributes)
        ):
            raise ConfigError("--custom-attributes takes up to 1024 visible ASCII characters")

    def request(self) -> dict[str, Any]:
        request: dict[str, Any] = {
            "EndpointName": self.endpoint_name,
            "Body": self.body,
            "ContentType": self.content_type,
        }
        optional = {
            "Accept": self.accept,
            "TargetModel": self.target_model,
            "CustomAttributes": self.custom_attributes,
            "InferenceComponentName": self.component,
        }
        request.update({key: value for key, value in optional.items() if value is not None})
        return request

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> InvokeConfig:
        if args.body is not None:
            body = args.body.encode()
        elif args.body_file == "-":
            body = sys.stdin.buffer.read()
        else:
            path = Path(args.body_file)
            if not path.is_file():
                raise ConfigError(f"--body-file {path} is not a file")
            body = path.read_bytes()
        return cls(
            aws=AwsOptions.from_args(args),
            endpoint_name=args.endpoint_name,
            body=body,
            content_type=args.content_type,
            accept=args.accept,
            target_model=args.target_model,
            custom_attributes=args.custom_attributes,
            stream=args.stream,
            output=Path(args.output) if args.output else None,
            component=args.inference_component,
            wait_for_capacity_s=args.wait_for_capacity,
        )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "invoke",
        help="send one request to an endpoint",
        description="Call InvokeEndpoint (or InvokeEndpointWithResponseStream with "
        "--stream) and write the response body to stdout.",
    )
    add_aws_arguments(parser)
    parser.add_argument("--endpoint-name", "--name", required=True, help="endpoint name")
    body = parser.add_mutually_exclusive_group(required=True)
    body.add_argument("--body", help="request body as text")
    body.add_argument("--body-file", help="file holding the request body ('-' for stdin)")
    parser.add_argument("--content-type", default="application/json", help="default: %(default)s")
    parser.add_argument("--accept", help="Accept header for the response")
    parser.add_argument("--target-model", help="tarball to call on a multi-model endpoint")
    parser.add_argument(
        "--inference-component", metavar="NAME", help="the inference component to call"
    )
    parser.add_argument(
        "--wait-for-capacity",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="retry this long while the component has no copy (scaled to zero: SageMaker "
        "starts one on the first request, in minutes)",
    )
    parser.add_argument(
        "--custom-attributes", help="X-Amzn-SageMaker-Custom-Attributes, passed to the container"
    )
    parser.add_argument(
        "--stream", action="store_true", help="stream the response (chunked) as it is produced"
    )
    parser.add_argument("--output", help="write the response body to this file")
    parser.set_defaults(run=run)


def _model_error(error: ClientError) -> SmtritonError | None:
    """Turn ModelError (the container answered 4xx/5xx) into the container's own words."""
    if error.response.get("Error", {}).get("Code") != "ModelError":
        return None
    status = error.response.get("OriginalStatusCode", "?")
    message = error.response.get("OriginalMessage") or error.response["Error"].get("Message", "")
    text = f"the container answered HTTP {status}: {message}"
    if error.response.get("LogStreamArn"):
        text += f" (logs: {error.response['LogStreamArn']})"
    return SmtritonError(text)


def _no_capacity(error: ClientError) -> bool:
    details = error.response.get("Error", {})
    return details.get("Code") in {"ValidationError", "ValidationException"} and NO_CAPACITY in (
        details.get("Message", "")
    )


def invoke(
    config: InvokeConfig, sink: BinaryIO, sleep: Callable[[float], None] = time.sleep
) -> str | None:
    """Send the request and write the body to SINK; return the response content type.

    A component with no copy is asked again every few seconds for up to
    --wait-for-capacity; without it, or once that has passed, the error says why.
    """
    runtime = client(open_session(config.aws), "sagemaker-runtime")
    progress: Progress | None = None
    try:
        while True:
            try:
                return _invoke_once(config, runtime, sink)
            except ClientError as error:
                if not _no_capacity(error):
                    raise
                progress = progress or Progress(f"inference component {config.component}")
                if progress.elapsed >= config.wait_for_capacity_s:
                    raise SmtritonError(
                        f"inference component {config.component} has no copy to answer (it "
                        "scales to zero): SageMaker starts one when its scale-out alarm fires, "
                        f"which takes minutes; waited {format_elapsed(progress.elapsed)} "
                        "(--wait-for-capacity SECONDS retries until a copy answers)"
                    ) from None
                progress.update("no copy yet, SageMaker is starting one")
                sleep(config.capacity_poll_s)
    finally:
        if progress is not None:
            progress.finish()


def _invoke_once(config: InvokeConfig, runtime: Client, sink: BinaryIO) -> str | None:
    try:
        if not config.stream:
            response = runtime.invoke_endpoint(**config.request())
            sink.write(response["Body"].read())
            return response.get("ContentType")
        response = runtime.invoke_endpoint_with_response_stream(**config.request())
        for event in response["Body"]:
            if "PayloadPart" in event:
                sink.write(event["PayloadPart"]["Bytes"])
                sink.flush()
            elif "ModelStreamError" in event:
                problem = event["ModelStreamError"]
                raise SmtritonError(
                    f"the stream broke: {problem.get('ErrorCode', '')} {problem.get('Message', '')}"
                )
            elif "InternalStreamFailure" in event:
                raise SmtritonError(
                    f"the stream broke: {event['InternalStreamFailure']['Message']}"
                )
        return response.get("ContentType")
    except ClientError as error:
        translated = _model_error(error)
        if translated is None:
            raise
        raise translated from None


def run(args: argparse.Namespace) -> int:
    config = InvokeConfig.from_args(args)
    if config.output is not None:
        with config.output.open("wb") as sink:
            content_type = invoke(config, sink)
    else:
        content_type = invoke(config, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    log.info("content type: %s", content_type)
    return 0
