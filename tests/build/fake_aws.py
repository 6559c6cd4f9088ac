"""A local stand-in for AWS: moto's server plus what moto 5.2 lacks for these tests.

Run as a script (`python fake_aws.py --port N`); it serves every AWS API moto
knows on 127.0.0.1, over real HTTP, to real boto3 clients. Added here, and
only here:

- UpdateEndpoint, which moto does not implement;
- today's instance types: moto 5.2 checks endpoint configurations against an
  old list (no ml.g5, smtriton deploy's default); the newer families
  (NEWER_FAMILIES) are taken too, and anything else is still moto's to refuse;
- asynchronous endpoint states: CreateEndpoint/UpdateEndpoint leave the
  endpoint Creating/Updating and each DescribeEndpoint moves it one step on,
  as SageMaker does over minutes;
- endpoint failures on demand: a model whose container environment holds
  FAKE_SAGEMAKER_FAILURE_REASON fails to start (create: Failed; update:
  RollingBack, then InService on the old configuration), with that reason;
- the runtime data plane (InvokeEndpoint and InvokeEndpointWithResponseStream):
  it answers with a JSON echo of what reached it, so tests can check what
  the client sent; a body starting with MODEL_ERROR makes the "container"
  answer 400 (SageMaker's ModelError);
- containers that run for real: `POST /_fake/containers` with `{"image":
  IMAGE, "mode": "SingleModel" | "MultiModel", "url": "http://127.0.0.1:PORT",
  "models_dir": DIR}` says a `serve` of that image, started as SageMaker
  starts one for that mode, listens at URL. InvokeEndpoint on an endpoint
  whose model names that image and mode is then passed to it as SageMaker passes it (Content-Type,
  Accept, CustomAttributes; the answer's Content-Type and custom attributes
  back; a 4xx/5xx becomes ModelError). A multi-model endpoint's TargetModel
  is fetched from the model's S3 prefix, unpacked into DIR/<hash>/model,
  loaded with POST /models and invoked at /models/<hash>/invoke.
  InvokeEndpointWithResponseStream is passed on too: the container's answer
  is read as it arrives and each piece it sends becomes a PayloadPart of
  AWS's event-stream encoding, as SageMaker frames it (so a client sees
  tokens as the model makes them, cut wherever the container's writes fell);
  an answer of 4xx/5xx before the stream starts becomes ModelError.
"""

from __future__ import annotations

import argparse
import binascii
import hashlib
import http.client
import io
import json
import re
import struct
import tarfile
import urllib.parse
from pathlib import Path
from typing import Any

from moto.core.responses import ActionResult
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.s3.models import s3_backends
from moto.sagemaker import models as sagemaker_models
from moto.sagemaker.exceptions import ValidationError
from moto.sagemaker.responses import SageMakerResponse
from werkzeug.serving import run_simple
from werkzeug.wrappers import Request, Response

FAILURE_VARIABLE = "FAKE_SAGEMAKER_FAILURE_REASON"
ACCOUNT = "123456789012"
RUNTIME_PATH = re.compile(
    r"^/endpoints/(?P<name>[^/]+)/(?P<kind>invocations(?:-response-stream)?)$"
)


# --- control plane ----------------------------------------------------------------------------


def _failure_reason(backend: Any, config_name: str) -> str | None:
    config = backend.endpoint_configs[config_name]
    for variant in config.production_variants:
        model = backend._models[variant["ModelName"]]
        reason = (model.primary_container or {}).get("Environment", {}).get(FAILURE_VARIABLE)
        if reason:
            return reason
    return None


def _steps(endpoint: Any) -> list[tuple[str, str | None, str | None]]:
    """Pending (status, config, failure reason) states, applied one per describe."""
    return endpoint.__dict__.setdefault("fake_steps", [])


_original_create_endpoint = sagemaker_models.SageMakerModelBackend.create_endpoint
_original_describe_endpoint = sagemaker_models.SageMakerModelBackend.describe_endpoint


def create_endpoint(self: Any, endpoint_name: str, endpoint_config_name: str, tags: Any) -> Any:
    endpoint = _original_create_endpoint(self, endpoint_name, endpoint_config_name, tags)
    reason = _failure_reason(self, endpoint_config_name)
    endpoint.endpoint_status = "Creating"
    final = ("Failed", endpoint_config_name, reason) if reason else ("InService", None, None)
    _steps(endpoint)[:] = [("Creating", None, None), final]
    return endpoint


def describe_endpoint(self: Any, endpoint_name: str) -> dict[str, Any]:
    endpoint = self.endpoints.get(endpoint_name)
    if endpoint is not None and _steps(endpoint):
        status, config_name, reason = _steps(endpoint).pop(0)
        endpoint.endpoint_status = status
        endpoint.failure_reason = reason
        if config_name:
            endpoint.endpoint_config_name = config_name
    return _original_describe_endpoint(self, endpoint_name)


def update_endpoint(self: Any, endpoint_name: str, endpoint_config_name: str) -> Any:
    endpoint = self.endpoints.get(endpoint_name)
    if endpoint is None:
        arn = sagemaker_models.FakeEndpoint.arn_formatter(
            endpoint_name, self.account_id, self.region_name
        )
        raise ValidationError(message=f"Could not find endpoint '{arn}'.")
    if endpoint_config_name not in self.endpoint_configs:
        raise ValidationError(
            message=f"Could not find endpoint configuration '{endpoint_config_name}'."
        )
    if endpoint.endpoint_status != "InService":
        raise ValidationError(message=f"Cannot update in-progress endpoint '{endpoint_name}'.")
    old_config = endpoint.endpoint_config_name
    reason = _failure_reason(self, endpoint_config_name)
    endpoint.endpoint_status = "Updating"
    if reason:
        _steps(endpoint)[:] = [
            ("Updating", None, None),
            ("RollingBack", None, reason),
            ("InService", old_config, reason),
        ]
    else:
        config = self.endpoint_configs[endpoint_config_name]
        endpoint.production_variants = endpoint._process_production_variants(
            config.production_variants
        )
        _steps(endpoint)[:] = [("Updating", None, None), ("InService", endpoint_config_name, None)]
    return endpoint


def update_endpoint_response(self: SageMakerResponse) -> Any:
    endpoint = self.sagemaker_backend.update_endpoint(
        endpoint_name=self._get_param("EndpointName"),
        endpoint_config_name=self._get_param("EndpointConfigName"),
    )
    return ActionResult({"EndpointArn": endpoint.arn})


# Instance families SageMaker offers that moto 5.2's list lacks; moto's own check stays
# for every other family, so a made-up type is still refused.
NEWER_FAMILIES = frozenset(
    {"g5", "g6", "g6e", "p4d", "p4de", "p5", "p5e", "inf2", "trn1", "c7i", "m7i", "r7i"}
)
INSTANCE_TYPE = re.compile(r"^ml\.(?P<family>[a-z0-9]+)\.(?:\d*xlarge|large|medium)$")
_original_validate_instance_type = sagemaker_models.FakeEndpointConfig.validate_instance_type


def validate_instance_type(self: Any, instance_type: str) -> None:
    match = INSTANCE_TYPE.match(instance_type)
    if match is None or match["family"] not in NEWER_FAMILIES:
        _original_validate_instance_type(self, instance_type)


sagemaker_models.FakeEndpointConfig.validate_instance_type = validate_instance_type
sagemaker_models.SageMakerModelBackend.create_endpoint = create_endpoint
sagemaker_models.SageMakerModelBackend.describe_endpoint = describe_endpoint
sagemaker_models.SageMakerModelBackend.update_endpoint = update_endpoint
SageMakerResponse.update_endpoint = update_endpoint_response


# --- runtime data plane -----------------------------------------------------------------------


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


def _endpoint_exists(request: Request, name: str) -> bool:
    return name in sagemaker_models.sagemaker_backends[ACCOUNT][_region(request)].endpoints


def runtime_app(request: Request, name: str, streaming: bool) -> Response:
    if not _endpoint_exists(request, name):
        return _json_error(
            400, "ValidationError", {"message": f"Endpoint {name} of account {ACCOUNT} not found."}
        )
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
    event_headers = {
        ":event-type": "PayloadPart",
        ":message-type": "event",
        ":content-type": "application/octet-stream",
    }
    stream = b"".join(_event_message(event_headers, part) for part in parts)
    return Response(
        stream,
        headers={
            "Content-Type": "application/vnd.amazon.eventstream",
            "X-Amzn-SageMaker-Content-Type": "application/json",
        },
    )


# --- containers that run for real --------------------------------------------------------------

CONTAINERS_PATH = "/_fake/containers"
# (image, mode) -> {"url": ..., "models_dir": ...}: where a serve of that image listens.
_containers: dict[tuple[str, str], dict[str, str]] = {}
# What SageMaker passes from InvokeEndpoint to the container, and back.
_PASSED = ("Content-Type", "Accept", "X-Amzn-SageMaker-Custom-Attributes")


def register_container(request: Request) -> Response:
    spec = json.loads(request.get_data())
    key = (spec["image"], spec.get("mode", "SingleModel"))
    _containers[key] = {"url": spec["url"], "models_dir": spec.get("models_dir", "")}
    return Response(status=204)


def _running_container(request: Request, name: str) -> tuple[dict[str, Any], dict[str, str]] | None:
    """The endpoint's primary container, and where it runs, if it runs for real."""
    backend = sagemaker_models.sagemaker_backends[ACCOUNT][_region(request)]
    endpoint = backend.endpoints.get(name)
    if endpoint is None:
        return None
    config = backend.endpoint_configs[endpoint.endpoint_config_name]
    model = backend._models[config.production_variants[0]["ModelName"]]
    container = model.primary_container or (model.containers or [{}])[0]
    running = _containers.get((container.get("Image", ""), container.get("Mode", "SingleModel")))
    return (container, running) if running else None


def _call(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, Any]:
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
    try:
        connection.request("POST", path, body=body, headers=headers)
        reply = connection.getresponse()
        return reply.status, reply.read(), reply.headers
    finally:
        connection.close()


def _load_target(container: dict[str, Any], running: dict[str, str], target: str) -> str:
    """SageMaker's part of a multi-model invocation: fetch, unpack and load TargetModel once."""
    name = hashlib.sha256(target.encode()).hexdigest()[:32]
    folder = Path(running["models_dir"]) / name / "model"
    if not folder.is_dir():
        bucket, _, prefix = container["ModelDataUrl"].removeprefix("s3://").partition("/")
        key = prefix.rstrip("/") + "/" + target.lstrip("/") if prefix else target
        found = s3_backends[ACCOUNT]["aws"].get_object(bucket, key)
        if found is None:
            raise LookupError(f"s3://{bucket}/{key} does not exist")
        folder.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(found.value)) as archive:
            archive.extractall(folder, filter="data")
    body = json.dumps({"model_name": name, "url": str(folder)}).encode()
    status, answer, _ = _call(
        running["url"], "/models", body, {"X-Amzn-SageMaker-Target-Model": target}
    )
    if status not in (200, 409):
        raise LookupError(f"loading {target} answered {status}: {answer.decode()}")
    return name


def forward_stream(
    request: Request, name: str, container: dict[str, Any], running: dict[str, str]
) -> Response:
    """InvokeEndpointWithResponseStream to a running container: each piece it sends, a
    PayloadPart, as it arrives."""
    if container.get("Mode") == "MultiModel":
        return _json_error(
            400, "ValidationError", {"message": "streaming a multi-model endpoint is not faked"}
        )
    headers = {h: request.headers[h] for h in _PASSED if h in request.headers}
    parsed = urllib.parse.urlsplit(running["url"])
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
    connection.request("POST", "/invocations", body=request.get_data(), headers=headers)
    reply = connection.getresponse()
    if reply.status >= 400:
        body = reply.read()
        connection.close()
        return _model_error(name, reply.status, body.decode("utf-8", "replace"))
    part = {
        ":event-type": "PayloadPart",
        ":message-type": "event",
        ":content-type": "application/octet-stream",
    }

    def parts() -> Any:
        try:
            while piece := reply.read1(65536):
                yield _event_message(part, piece)
        finally:
            connection.close()

    answer_headers = {
        "Content-Type": "application/vnd.amazon.eventstream",
        "X-Amzn-SageMaker-Content-Type": reply.headers.get(
            "Content-Type", "application/octet-stream"
        ),
        "x-Amzn-Invoked-Production-Variant": "AllTraffic",
    }
    attributes = reply.headers.get("X-Amzn-SageMaker-Custom-Attributes")
    if attributes:
        answer_headers["X-Amzn-SageMaker-Custom-Attributes"] = attributes
    return Response(parts(), headers=answer_headers, direct_passthrough=True)


def forward(
    request: Request, name: str, container: dict[str, Any], running: dict[str, str]
) -> Response:
    headers = {h: request.headers[h] for h in _PASSED if h in request.headers}
    target = request.headers.get("X-Amzn-SageMaker-Target-Model")
    path = "/invocations"
    if container.get("Mode") == "MultiModel":
        if not target:
            return _json_error(
                400, "ValidationError", {"message": "TargetModel is required for this endpoint."}
            )
        try:
            path = f"/models/{_load_target(container, running, target)}/invoke"
        except LookupError as exc:
            return _json_error(400, "ValidationError", {"message": str(exc)})
    status, body, reply_headers = _call(running["url"], path, request.get_data(), headers)
    if status >= 400:
        return _model_error(name, status, body.decode("utf-8", "replace"))
    answer_headers = {
        "Content-Type": reply_headers.get("Content-Type", "application/octet-stream"),
        "x-Amzn-Invoked-Production-Variant": "AllTraffic",
    }
    attributes = reply_headers.get("X-Amzn-SageMaker-Custom-Attributes")
    if attributes:
        answer_headers["X-Amzn-SageMaker-Custom-Attributes"] = attributes
    return Response(body, headers=answer_headers)


class FakeAws:
    """WSGI app: the runtime data plane here, everything else to moto."""

    def __init__(self) -> None:
        self.moto = DomainDispatcherApplication(create_backend_app)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD")
        if path == CONTAINERS_PATH and method == "POST":
            return register_container(Request(environ))(environ, start_response)
        match = RUNTIME_PATH.match(path)
        if match and method == "POST":
            request = Request(environ)
            streaming = match["kind"].endswith("stream")
            running = _running_container(request, match["name"])
            if running is not None and streaming:
                response = forward_stream(request, match["name"], *running)
            elif running is not None:
                response = forward(request, match["name"], *running)
            else:
                response = runtime_app(request, match["name"], streaming)
            return response(environ, start_response)
        return self.moto(environ, start_response)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    run_simple(
        "127.0.0.1",
        args.port,
        FakeAws(),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
