"""A local stand-in for AWS: moto's server plus what moto 5.2 lacks for these tests.

Run as a script (`python fake_aws.py --port N [--work DIR]`); it serves every
AWS API moto knows on 127.0.0.1, over real HTTP, to real boto3 clients.
Added, and only here:

- SageMaker's control plane where moto lacks it (fake_sagemaker.py):
  UpdateEndpoint, endpoint states over time, failures on demand, today's
  instance types, inference components and their scale-out from zero,
  transform jobs that run;
- the runtime data plane (InvokeEndpoint, InvokeEndpointWithResponseStream,
  InvokeEndpointAsync). Where no real container answers, it answers with a
  JSON echo of what reached it, so tests can check what the client sent; a
  body starting with MODEL_ERROR makes the "container" answer 400
  (SageMaker's ModelError). An asynchronous request is queued: its body is
  read from the stand-in's S3, at most MaxConcurrentInvocationsPerInstance
  at once per endpoint are passed to the container (with the request's
  ContentType, else the input object's: the stand-in's reading of what
  SageMaker does, which the SDK relies on), and the answer is
  written to S3OutputPath/ID.out (a 4xx/5xx to S3FailurePath/ID-error.out),
  with SageMaker's notification published to the SNS topics configured;
- containers that run for real (fake_containers.py): `POST /_fake/images`
  names an image the stand-in may run itself, as SageMaker runs it, from the
  model data in its S3; `POST /_fake/containers` with `{"image": IMAGE,
  "mode": "SingleModel" | "MultiModel", "url": "http://127.0.0.1:PORT",
  "models_dir": DIR}` says a `serve` someone else started answers for that
  image and mode. An invocation of an endpoint (or inference component) of
  such an image is passed to its container as SageMaker passes it
  (Content-Type, Accept, CustomAttributes; the answer's Content-Type and
  custom attributes back; a 4xx/5xx becomes ModelError). A multi-model
  endpoint's TargetModel is fetched from the model's S3 prefix, unpacked
  into DIR/<hash>/model, loaded with POST /models and invoked at
  /models/<hash>/invoke. InvokeEndpointWithResponseStream is passed on
  too: the container's answer is read as it arrives and each piece it sends
  becomes a PayloadPart of AWS's event-stream encoding, as SageMaker frames
  it (so a client sees tokens as the model makes them, cut wherever the
  container's writes fell); an answer of 4xx/5xx before the stream starts
  becomes ModelError.

On SIGTERM the stand-in stops the containers it started before it exits.
"""

from __future__ import annotations

import argparse
import binascii
import hashlib
import http.client
import io
import json
import re
import signal
import struct
import sys
import tarfile
import tempfile
import threading
import traceback
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any

if not __package__:  # run as a script: the repository's root makes `tests.build` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.sns.models import sns_backends
from werkzeug.serving import run_simple
from werkzeug.wrappers import Request, Response

from tests.build import fake_sagemaker, fake_transform
from tests.build.fake_containers import (
    CONTAINERS,
    Container,
    read_object,
    read_object_and_type,
    write_object,
)
from tests.build.fake_sagemaker import (
    ACCOUNT,
    Backend,
    backend_of,
    components,
    count_no_capacity,
    endpoint_spec,
)

RUNTIME_PATH = re.compile(
    r"^/endpoints/(?P<name>[^/]+)/(?P<kind>invocations(?:-response-stream)?|async-invocations)$"
)
COMPONENT_HEADER = "X-Amzn-SageMaker-Inference-Component"
# SageMaker's words for an invocation a component cannot take.
COMPONENT_REQUIRED = (
    "Inference Component Name header is required for endpoints to which you plan to deploy "
    "inference components. Please include Inference Component Name header or consider using "
    "SageMaker models."
)
NO_CAPACITY = (
    "Inference Component has no capacity to process this request. ApplicationAutoScaling may "
    "be in-progress (if configured) or try to increase the capacity by invoking "
    "UpdateInferenceComponentRuntimeConfig API."
)


# --- runtime data plane -----------------------------------------------------------------------


# The headers of each piece of a streamed answer (InvokeEndpointWithResponseStream).
PAYLOAD_PART = {
    ":event-type": "PayloadPart",
    ":message-type": "event",
    ":content-type": "application/octet-stream",
}


def _event_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One message of the AWS event-stream encoding (string headers only)."""
    encoded = b"".join(
        struct.pack("B", len(name))
        + name.encode()
        + b"\x07"
        + struct.pack(">H", len(value))
        + value.encode()
        for name, value in headers.items()
    )
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + encoded + payload
    return message + struct.pack(">I", binascii.crc32(message) & 0xFFFFFFFF)


def _json_error(status: int, error_type: str, body: dict[str, Any]) -> Response:
    return Response(
        json.dumps({"__type": error_type, **body}),
        status=status,
        headers={"x-amzn-ErrorType": error_type, "Content-Type": "application/json"},
    )


def _model_error(name: str, status: int, message: str) -> Response:
    """SageMaker's answer when the container answers 4xx/5xx: 424, with the container's own."""
    kind = "client" if status < 500 else "server"
    return _json_error(
        424,
        "ModelError",
        {
            "message": f'Received {kind} error ({status}) from primary with message "{message}".',
            "OriginalStatusCode": status,
            "OriginalMessage": message,
            "LogStreamArn": (
                f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:/aws/sagemaker/Endpoints/{name}"
            ),
        },
    )


def _region(request: Request) -> str:
    match = re.search(r"Credential=[^/]+/\d+/([^/]+)/", request.headers.get("Authorization", ""))
    return match.group(1) if match else "us-east-1"


def echo(request: Request, name: str, streaming: bool) -> Response:
    """What a container would answer, made up: what reached it, as JSON."""
    body = request.get_data()
    if body.startswith(b"MODEL_ERROR"):
        return _model_error(name, 400, '{"error": "input user_id is missing"}')
    echo = json.dumps(
        {
            "endpoint": name,
            "body": body.decode("utf-8", "replace"),
            "content_type": request.headers.get("Content-Type"),
            "accept": request.headers.get("Accept"),
            "target_model": request.headers.get("X-Amzn-SageMaker-Target-Model"),
            "custom_attributes": request.headers.get("X-Amzn-SageMaker-Custom-Attributes"),
            "inference_component": request.headers.get(COMPONENT_HEADER),
            "streaming": streaming,
        },
        sort_keys=True,
    ).encode()
    if not streaming:
        return Response(
            echo,
            headers={
                "Content-Type": "application/json",
                "x-Amzn-Invoked-Production-Variant": "AllTraffic",
            },
        )
    # Three PayloadParts, so the client has to put the parts back together.
    third = max(1, len(echo) // 3)
    parts = [echo[:third], echo[third : 2 * third], echo[2 * third :]]
    stream = b"".join(_event_message(PAYLOAD_PART, part) for part in parts)
    return Response(
        stream,
        headers={
            "Content-Type": "application/vnd.amazon.eventstream",
            "X-Amzn-SageMaker-Content-Type": "application/json",
        },
    )


# --- containers that run for real --------------------------------------------------------------

CONTAINERS_PATH = "/_fake/containers"
IMAGES_PATH = "/_fake/images"
# What SageMaker passes from InvokeEndpoint to the container, and back.
_PASSED = ("Content-Type", "Accept", "X-Amzn-SageMaker-Custom-Attributes")


def register_container(request: Request) -> Response:
    spec = json.loads(request.get_data())
    CONTAINERS.register_running(
        spec["image"], spec.get("mode", "SingleModel"), spec["url"], spec.get("models_dir", "")
    )
    return Response(status=204)


def allow_image(request: Request, work: Path) -> Response:
    spec = json.loads(request.get_data())
    CONTAINERS.allow(
        spec["image"], spec["command"], spec.get("root") or str(work), spec.get("env", {})
    )
    return Response(status=204)


def _validation_error(message: str) -> Response:
    return _json_error(400, "ValidationError", {"message": message})


def _container_for(request: Request, backend: Backend, name: str) -> Container | Response | None:
    """Who answers this invocation: a container, an error SageMaker would give, or None (echo)."""
    region = _region(request)
    component_name = request.headers.get(COMPONENT_HEADER)
    if component_name:
        component = components(backend).get(component_name)
        if component is None or component.endpoint_name != name:
            return _validation_error(
                f"Inference component {component_name} is not deployed to endpoint {name}."
            )
        if component.copies == 0:
            count_no_capacity(region, component)
            return _validation_error(NO_CAPACITY)
        if component.status not in ("InService", "Updating"):
            return _validation_error(f"Inference component {component_name} is {component.status}.")
        container = CONTAINERS.of(f"component/{component_name}")
        if container is not None and container.state() != "ready":
            # A copy on its way (woken from zero) answers nothing yet.
            return _validation_error(NO_CAPACITY)
        return container
    if any(c.endpoint_name == name for c in components(backend).values()):
        return _validation_error(COMPONENT_REQUIRED)
    owner = f"endpoint/{name}"
    container = CONTAINERS.of(owner)
    if container is None:
        # A container registered after the endpoint was made.
        spec = endpoint_spec(backend, backend.endpoints[name].endpoint_config_name)
        if spec is not None and CONTAINERS.runs(spec):
            container = CONTAINERS.acquire(owner, spec)
    return container


def _call(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, Any]:
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
    try:
        connection.request("POST", path, body=body, headers=headers)
        reply = connection.getresponse()
        return reply.status, reply.read(), reply.headers
    finally:
        connection.close()


def _load_target(container: Container, target: str) -> str:
    """SageMaker's part of a multi-model invocation: fetch, unpack and load TargetModel once."""
    name = hashlib.sha256(target.encode()).hexdigest()[:32]
    folder = Path(container.models_dir) / name / "model"
    if not folder.is_dir():
        prefix = container.spec.data_url.rstrip("/")
        data = read_object(f"{prefix}/{target.lstrip('/')}")
        folder.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            archive.extractall(folder, filter="data")
    body = json.dumps({"model_name": name, "url": str(folder)}).encode()
    status, answer, _ = _call(
        container.url, "/models", body, {"X-Amzn-SageMaker-Target-Model": target}
    )
    if status not in (200, 409):
        raise LookupError(f"loading {target} answered {status}: {answer.decode()}")
    return name


def _passed(request: Request) -> dict[str, str]:
    """The request headers SageMaker passes on to the container."""
    return {h: request.headers[h] for h in _PASSED if h in request.headers}


def _answer_headers(reply_headers: Any, content_type: str) -> dict[str, str]:
    """SageMaker's headers of a container's answer: its type (under `content_type`), the
    variant, and the container's custom attributes."""
    answer = {
        content_type: reply_headers.get("Content-Type", "application/octet-stream"),
        "x-Amzn-Invoked-Production-Variant": "AllTraffic",
    }
    attributes = reply_headers.get("X-Amzn-SageMaker-Custom-Attributes")
    if attributes:
        answer["X-Amzn-SageMaker-Custom-Attributes"] = attributes
    return answer


def forward_stream(request: Request, name: str, container: Container) -> Response:
    """InvokeEndpointWithResponseStream to a running container: each piece it sends, a
    PayloadPart, as it arrives."""
    if container.spec.mode == "MultiModel":
        return _validation_error("streaming a multi-model endpoint is not faked")
    parsed = urllib.parse.urlsplit(container.url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
    connection.request("POST", "/invocations", body=request.get_data(), headers=_passed(request))
    reply = connection.getresponse()
    if reply.status >= 400:
        body = reply.read()
        connection.close()
        return _model_error(name, reply.status, body.decode("utf-8", "replace"))

    def parts() -> Any:
        try:
            while piece := reply.read1(65536):
                yield _event_message(PAYLOAD_PART, piece)
        finally:
            connection.close()

    headers = _answer_headers(reply.headers, "X-Amzn-SageMaker-Content-Type")
    headers["Content-Type"] = "application/vnd.amazon.eventstream"
    return Response(parts(), headers=headers, direct_passthrough=True)


def forward(request: Request, name: str, container: Container) -> Response:
    target = request.headers.get("X-Amzn-SageMaker-Target-Model")
    path = "/invocations"
    if container.spec.mode == "MultiModel":
        if not target:
            return _validation_error("TargetModel is required for this endpoint.")
        try:
            path = f"/models/{_load_target(container, target)}/invoke"
        except LookupError as exc:
            return _validation_error(str(exc))
    status, body, reply_headers = _call(container.url, path, request.get_data(), _passed(request))
    if status >= 400:
        return _model_error(name, status, body.decode("utf-8", "replace"))
    return Response(body, headers=_answer_headers(reply_headers, "Content-Type"))


def invoke(request: Request, name: str, streaming: bool) -> Response:
    backend = backend_of(_region(request))
    if name not in backend.endpoints:
        return _validation_error(f"Endpoint {name} of account {ACCOUNT} not found.")
    answering = _container_for(request, backend, name)
    if isinstance(answering, Response):
        return answering
    if answering is None:
        return echo(request, name, streaming)
    if streaming:
        return forward_stream(request, name, answering)
    return forward(request, name, answering)


# --- asynchronous inference ---------------------------------------------------------------------

_QUEUE = ThreadPoolExecutor(max_workers=16, thread_name_prefix="async")
# Requests an endpoint's instance works on at once when MaxConcurrentInvocationsPerInstance
# is not set (the stand-in's choice: SageMaker picks its own).
DEFAULT_ASYNC_CONCURRENCY = 4
_slots: dict[str, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


def _slot(name: str, limit: int) -> threading.BoundedSemaphore:
    with _slots_lock:
        return _slots.setdefault(name, threading.BoundedSemaphore(limit))


def invoke_async(request: Request, name: str) -> Response:
    region = _region(request)
    backend = backend_of(region)
    endpoint = backend.endpoints.get(name)
    if endpoint is None:
        return _validation_error(f"Endpoint {name} of account {ACCOUNT} not found.")
    config = backend.endpoint_configs[endpoint.endpoint_config_name].async_inference_config
    if not config:
        return _validation_error(f"Endpoint {name} is not an asynchronous inference endpoint.")
    input_location = request.headers.get("X-Amzn-SageMaker-InputLocation")
    if not input_location:
        return _validation_error("InputLocation is required.")
    output = config["OutputConfig"]
    answers = output["S3OutputPath"].rstrip("/")
    token = str(uuid.uuid4())
    job = {
        "endpoint": name,
        "region": region,
        "inference_id": request.headers.get("X-Amzn-SageMaker-Inference-Id") or token,
        "input": input_location,
        "output": f"{answers}/{token}.out",
        "failure": f"{output.get('S3FailurePath', answers).rstrip('/')}/{token}-error.out",
        "content_type": request.headers.get("X-Amzn-SageMaker-Content-Type"),
        "accept": request.headers.get("X-Amzn-SageMaker-Accept"),
        "custom_attributes": request.headers.get("X-Amzn-SageMaker-Custom-Attributes"),
        "topics": output.get("NotificationConfig") or {},
        "received": datetime.now(timezone.utc),
    }
    limit = (config.get("ClientConfig") or {}).get("MaxConcurrentInvocationsPerInstance")
    _QUEUE.submit(_answer_async, job, _slot(name, int(limit or DEFAULT_ASYNC_CONCURRENCY)))
    return Response(
        json.dumps({"InferenceId": job["inference_id"]}),
        status=202,
        headers={
            "Content-Type": "application/json",
            "X-Amzn-SageMaker-OutputLocation": job["output"],
            "X-Amzn-SageMaker-FailureLocation": job["failure"],
        },
    )


def _answer_async(job: dict[str, Any], slot: threading.BoundedSemaphore) -> None:
    """SageMaker's side of one queued request, a failure of the stand-in's own included."""
    try:
        _answer_async_request(job, slot)
    except Exception as error:
        traceback.print_exc()
        message = f"InternalServerError: the stand-in failed: {error!r}".encode()
        write_object(job["failure"], message, "text/plain")


def _answer_async_request(job: dict[str, Any], slot: threading.BoundedSemaphore) -> None:
    """SageMaker's side of one queued request: read, call the container, write, notify."""
    headers = {
        header: job[key]
        for header, key in (
            ("Accept", "accept"),
            ("X-Amzn-SageMaker-Custom-Attributes", "custom_attributes"),
        )
        if job[key]
    }
    content_type: str | None = "application/json"
    with slot:
        try:
            body, stored_type = read_object_and_type(job["input"])
        except LookupError as error:
            status, answer = 400, f"could not read the input: {error}".encode()
        else:
            # The request's ContentType, else the input object's own (the SageMaker Python
            # SDK sets only that), else bytes.
            headers["Content-Type"] = (
                job["content_type"] or stored_type or "application/octet-stream"
            )
            container = CONTAINERS.of(f"endpoint/{job['endpoint']}")
            if container is None:
                status = 200
                echoed = {"endpoint": job["endpoint"], "body": body.decode("utf-8", "replace")}
                answer = json.dumps({**echoed, **headers}).encode()
            else:
                status, answer, reply_headers = _call(container.url, "/invocations", body, headers)
                content_type = reply_headers.get("Content-Type")
    succeeded = status < 400
    if not succeeded:
        print(
            f"asynchronous inference {job['inference_id']} failed ({status}): {answer[:500]!r}",
            file=sys.stderr,
        )
    location = job["output"] if succeeded else job["failure"]
    write_object(location, answer, content_type)
    _notify(job, succeeded, location, content_type, answer)


def _notify(
    job: dict[str, Any], succeeded: bool, location: str, content_type: str | None, answer: bytes
) -> None:
    """SageMaker's notification of an asynchronous answer, on the topic configured for it."""
    topic = job["topics"].get("SuccessTopic" if succeeded else "ErrorTopic")
    if not topic:
        return
    message: dict[str, Any] = {
        "awsRegion": job["region"],
        "eventTime": datetime.now(timezone.utc).isoformat(),
        "receivedTime": job["received"].isoformat(),
        "invocationStatus": "Completed" if succeeded else "Failed",
        "requestParameters": {
            "contentType": job["content_type"],
            "endpointName": job["endpoint"],
            "inputLocation": job["input"],
        },
        "inferenceId": job["inference_id"],
        "eventVersion": "1.0",
        "eventSource": "aws:sagemaker",
        "eventName": "InferenceResult",
    }
    if succeeded:
        message["responseParameters"] = {"contentType": content_type, "outputLocation": location}
    else:
        message["failureLocation"] = location
        message["failureReason"] = answer.decode("utf-8", "replace")[:1024]
    sns_backends[ACCOUNT][job["region"]].publish(json.dumps(message), arn=topic)


class FakeAws:
    """WSGI app: the runtime data plane and the stand-in's own routes here, the rest to moto."""

    def __init__(self, work: Path) -> None:
        self.moto = DomainDispatcherApplication(create_backend_app)
        self.work = work

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD")
        if method == "POST" and path == CONTAINERS_PATH:
            return register_container(Request(environ))(environ, start_response)
        if method == "POST" and path == IMAGES_PATH:
            return allow_image(Request(environ), self.work)(environ, start_response)
        match = RUNTIME_PATH.match(path)
        if match and method == "POST":
            request = Request(environ)
            if match["kind"] == "async-invocations":
                return invoke_async(request, match["name"])(environ, start_response)
            streaming = match["kind"].endswith("stream")
            return invoke(request, match["name"], streaming)(environ, start_response)
        return self.moto(environ, start_response)


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--work", type=Path, help="where containers the stand-in runs keep their files"
    )
    args = parser.parse_args()
    fake_sagemaker.install()
    fake_transform.install()
    signal.signal(signal.SIGTERM, _stop)
    with tempfile.TemporaryDirectory(prefix="fake-aws-") as scratch:
        work = args.work or Path(scratch)
        try:
            run_simple(
                "127.0.0.1",
                args.port,
                FakeAws(work),
                threaded=True,
                request_handler=MotoRequestHandler,
            )
        except KeyboardInterrupt:
            pass
        finally:
            CONTAINERS.stop_all()


if __name__ == "__main__":
    main()
