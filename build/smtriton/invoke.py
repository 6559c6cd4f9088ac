"""`smtriton invoke`: call an endpoint the way an application would.

The response body goes to stdout (or --output) byte for byte, so it can be
piped; everything else (content type, errors) goes to stderr. A container
4xx/5xx arrives as SageMaker's ModelError, shown with the container's status
and message, which is where this image puts what was wrong.

An inference component is named with --inference-component. One scaled to
zero answers its first request with "no capacity" while SageMaker starts a
copy (minutes); --wait-for-capacity retries until one serves.

--async calls an asynchronous endpoint the way SageMaker takes it: the body
goes to S3 first (beside the endpoint's answers, or --input-location names
an object already there), InvokeEndpointAsync queues it, and the answer is
awaited in S3 and written out like any other (--no-wait prints where it
will be instead).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from botocore.exceptions import ClientError

from smtriton.aws import AwsOptions, Client, add_aws_arguments, client, open_session
from smtriton.components import COMPONENT_NAME_PATTERN
from smtriton.endpoints import ENDPOINT_NAME_PATTERN
from smtriton.errors import ConfigError, SmtritonError
from smtriton.progress import Progress, add_wait_arguments, format_elapsed, poll
from smtriton.s3 import parse_s3_uri

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # InvokeEndpoint's request and response cap
MAX_CUSTOM_ATTRIBUTES = 1024
# How SageMaker says a component has no copy to take the request (scaled to zero).
NO_CAPACITY = "has no capacity"
CAPACITY_POLL_S = 5.0
ASYNC_MAX_PAYLOAD_BYTES = 1024 * 1024 * 1024  # InvokeEndpointAsync's input in S3
ASYNC_TIMEOUT_S = 3600.0  # the longest InvocationTimeoutSeconds SageMaker allows


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
    asynchronous: bool = False
    """InvokeEndpointAsync: the body through S3, the answer awaited in S3."""
    body_path: Path | None = None
    """An asynchronous request's body, uploaded from this file rather than from `body`."""
    input_location: str | None = None
    """An asynchronous request's body already in S3."""
    wait: bool = True
    wait_timeout_s: float = ASYNC_TIMEOUT_S
    poll_interval_s: float = 5.0

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
        if self.asynchronous:
            self._check_async()
        elif self.input_location is not None or not self.wait:
            raise ConfigError("--input-location and --no-wait are for --async invocations")
        elif len(self.body) > MAX_PAYLOAD_BYTES:
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

    def _check_async(self) -> None:
        if self.stream or self.target_model or self.component:
            raise ConfigError(
                "--async calls an asynchronous endpoint, which streams nothing and serves one "
                "model: drop --stream, --target-model and --inference-component"
            )
        if self.input_location is not None:
            _, key = parse_s3_uri(self.input_location)
            if not key or key.endswith("/"):
                raise ConfigError(f"--input-location {self.input_location!r} must name an object")
        size = self.body_path.stat().st_size if self.body_path is not None else len(self.body)
        if size > ASYNC_MAX_PAYLOAD_BYTES:
            raise ConfigError(
                f"the body is {size} bytes; asynchronous inference takes at most "
                f"{ASYNC_MAX_PAYLOAD_BYTES} (use batch transform for more)"
            )
        if self.wait_timeout_s <= 0 or self.poll_interval_s <= 0:
            raise ConfigError("--wait-timeout and --poll-interval must be positive")

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
        body, body_path = b"", None
        given = [args.body, args.body_file, args.input_location]
        if sum(value is not None for value in given) != 1:
            raise ConfigError("give one of --body, --body-file and --input-location (with --async)")
        if args.body is not None:
            body = args.body.encode()
        elif args.body_file == "-":
            body = sys.stdin.buffer.read()
        elif args.body_file is not None:
            path = Path(args.body_file)
            if not path.is_file():
                raise ConfigError(f"--body-file {path} is not a file")
            # An asynchronous body goes from the file to S3 (up to 1 GB): never read whole.
            if args.asynchronous:
                body_path = path
            else:
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
            asynchronous=args.asynchronous,
            body_path=body_path,
            input_location=args.input_location,
            wait=not args.no_wait,
            wait_timeout_s=args.wait_timeout,
            poll_interval_s=args.poll_interval,
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
    body = parser.add_mutually_exclusive_group()
    body.add_argument("--body", help="request body as text")
    body.add_argument("--body-file", help="file holding the request body ('-' for stdin)")
    body.add_argument(
        "--input-location",
        metavar="S3_URI",
        help="with --async: the request body, already in S3",
    )
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
    asynchronous = parser.add_argument_group("asynchronous endpoints")
    asynchronous.add_argument(
        "--async",
        dest="asynchronous",
        action="store_true",
        help="InvokeEndpointAsync: the body goes to S3, the answer is awaited there",
    )
    add_wait_arguments(
        asynchronous,
        flag_help="print where the answer will be, and return",
        timeout_s=ASYNC_TIMEOUT_S,
        poll_s=5.0,
    )
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


def invoke_async(config: InvokeConfig, sink: BinaryIO) -> str | None:
    """Queue the request through S3 and write the answer to SINK once SageMaker wrote it.

    Returns the answer's content type; with --no-wait, writes the answer's
    S3 location instead (and returns None).
    """
    session = open_session(config.aws)
    runtime = client(session, "sagemaker-runtime")
    s3 = client(session, "s3")
    input_location = config.input_location or _upload_input(
        config, client(session, "sagemaker"), s3
    )
    request: dict[str, Any] = {
        "EndpointName": config.endpoint_name,
        "InputLocation": input_location,
        "ContentType": config.content_type,
        "InvocationTimeoutSeconds": int(ASYNC_TIMEOUT_S),
    }
    optional = {"Accept": config.accept, "CustomAttributes": config.custom_attributes}
    request.update({key: value for key, value in optional.items() if value is not None})
    response = runtime.invoke_endpoint_async(**request)
    inference_id, output = response["InferenceId"], response["OutputLocation"]
    failure = response.get("FailureLocation")
    log.info("asynchronous inference %s queued; its answer goes to %s", inference_id, output)
    if not config.wait:
        sink.write(f"{output}\n".encode())
        return None

    def check() -> tuple[str, dict[str, Any] | None]:
        found = _head(s3, output)
        if found is not None:
            return "answered", found
        if failure is not None and _head(s3, failure) is not None:
            bucket, key = parse_s3_uri(failure)
            reason = s3.get_object(Bucket=bucket, Key=key)["Body"].read(4096)
            raise SmtritonError(
                f"asynchronous inference {inference_id} failed ({failure}): "
                f"{reason.decode('utf-8', 'replace')}"
            )
        return "queued or running", None

    answer = poll(
        Progress(f"asynchronous inference {inference_id}"),
        check,
        timeout_s=config.wait_timeout_s,
        poll_s=config.poll_interval_s,
        still_waiting=f"SageMaker carries on: the answer will be at {output}",
    )
    bucket, key = parse_s3_uri(output)
    s3.download_fileobj(bucket, key, sink)
    return answer.get("ContentType")


def _head(s3: Client, uri: str) -> dict[str, Any] | None:
    bucket, key = parse_s3_uri(uri)
    try:
        return s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise


def _upload_input(config: InvokeConfig, sagemaker: Client, s3: Client) -> str:
    """Put the body beside the endpoint's answers (its role reads and writes there)."""
    described = sagemaker.describe_endpoint(EndpointName=config.endpoint_name)
    endpoint_config = sagemaker.describe_endpoint_config(
        EndpointConfigName=described["EndpointConfigName"]
    )
    output = endpoint_config.get("AsyncInferenceConfig", {}).get("OutputConfig", {})
    if "S3OutputPath" not in output:
        raise SmtritonError(
            f"endpoint {config.endpoint_name} is not asynchronous (its configuration has no "
            "AsyncInferenceConfig): invoke it without --async, or deploy it with --async-output"
        )
    bucket, _ = parse_s3_uri(output["S3OutputPath"])
    key = f"async-inputs/{config.endpoint_name}/{uuid.uuid4()}"
    if config.body_path is not None:
        s3.upload_file(str(config.body_path), bucket, key)
    else:
        s3.put_object(Bucket=bucket, Key=key, Body=config.body)
    log.info("uploaded the request body to s3://%s/%s", bucket, key)
    return f"s3://{bucket}/{key}"


def run(args: argparse.Namespace) -> int:
    config = InvokeConfig.from_args(args)
    if config.asynchronous:
        run_invoke: Callable[[InvokeConfig, BinaryIO], str | None] = invoke_async
    else:
        run_invoke = invoke
    if config.output is not None:
        with config.output.open("wb") as sink:
            content_type = run_invoke(config, sink)
    else:
        content_type = run_invoke(config, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    if content_type is not None:
        log.info("content type: %s", content_type)
    return 0
