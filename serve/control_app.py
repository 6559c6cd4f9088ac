"""The Python side of the front: routes nginx hands over because they need Python.

nginx reaches this Flask app on a unix socket (never a public port) for:
- `/_serve/ping`: why the endpoint is not healthy, while Triton is loading,
  after a failure, or while stopping (nginx answers healthy pings itself);
- `/_serve/invocation-error`: what went wrong when Triton failed an
  invocation (see `explain_failure`);
- on a multi-model endpoint, the /models control routes, and invocations of
  models whose names nginx cannot route to Triton itself.
"""

from __future__ import annotations

import json
import logging
import re

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from serve.errors import ArtifactError, ServeError
from serve.multi_model import (
    MAX_PAGE_SIZE,
    OUT_OF_MEMORY,
    PAGE_SIZE,
    ModelNotLoaded,
    ModelRegistry,
)
from serve.state import Phase, ServerState
from serve.triton_client import TritonClient, TritonReply

log = logging.getLogger(__name__)

# Headers nginx adds when it hands a failed request over.
TRITON_PATH_HEADER = "X-Serve-Triton-Path"
MODEL_HEADER = "X-Serve-Model"
BINARY_JSON_TYPE = "application/vnd.sagemaker-triton.binary+json"
BINARY_JSON = re.compile(
    r"^application/vnd\.sagemaker-triton\.binary\+json;json-header-size=(\d+)", re.IGNORECASE
)


def json_response(status: int, payload: dict[str, object]) -> Response:
    return Response(json.dumps(payload), status=status, mimetype="application/json")


def create_control_app(
    state: ServerState, triton: TritonClient, registry: ModelRegistry | None = None
) -> Flask:
    """The control app; `registry` adds the multi-model /models routes."""
    app = Flask("serve.control")

    @app.errorhandler(ServeError)
    def serve_error(error: ServeError) -> Response:
        return json_response(error.status, {"error": error.message})

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        return json_response(error.code or 500, {"error": error.description or error.name})

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception) -> Response:
        log.exception("unexpected error in the control app")
        return json_response(500, {"error": f"internal error in serve: {type(error).__name__}"})

    @app.get("/_serve/ping")
    def ping() -> Response:
        phase, reason = state.snapshot()
        if phase is Phase.READY:
            reason = "Triton reports the model is not ready"
        return json_response(503, {"status": phase.value, "reason": reason})

    @app.post("/_serve/invocation-error")
    def explain_invocation_error() -> Response:
        model = request.headers.get(MODEL_HEADER)
        if registry is not None and model is not None and not registry.is_loaded(model):
            raise ModelNotLoaded(f"model {model!r} is not loaded")
        return explain_failure(triton, request.headers[TRITON_PATH_HEADER])

    if registry is not None:
        _add_multi_model_routes(app, triton, registry)
    return app


def _add_multi_model_routes(app: Flask, triton: TritonClient, registry: ModelRegistry) -> None:
    @app.get("/models")
    def list_models() -> Response:
        token = request.args.get("next_page_token") or request.args.get("nextPageToken")
        size = request.args.get("page_size", PAGE_SIZE, type=int)
        if not 0 < size <= MAX_PAGE_SIZE:
            raise ServeError(f"page_size must be between 1 and {MAX_PAGE_SIZE}", 400)
        return json_response(200, registry.page(token, size))

    @app.post("/models")
    def load_model() -> Response:
        try:
            body = json.loads(request.get_data())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"the request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict) or not {"model_name", "url"} <= body.keys():
            raise ArtifactError('the body must be {"model_name": NAME, "url": FOLDER}')
        log.info(
            "loading model %r from %s (target model %s)",
            body["model_name"],
            body["url"],
            request.headers.get("X-Amzn-SageMaker-Target-Model", "not given"),
        )
        model = registry.load(body["model_name"], str(body["url"]))
        return json_response(200, {"status": "loaded", **model.describe()})

    @app.get("/models/<name>")
    def describe_model(name: str) -> Response:
        return json_response(200, registry.get(name).describe())

    @app.delete("/models/<name>")
    def unload_model(name: str) -> Response:
        registry.unload(name)
        return json_response(200, {"status": "unloaded", "modelName": name})

    @app.post("/models/<name>/invoke")
    def invoke_model(name: str) -> Response:
        """Invocations of models whose names nginx cannot route to Triton itself."""
        path = registry.triton_path(name)
        reply = triton.request("POST", path, body=request.get_data(), headers=_triton_headers())
        if reply.status == 200:
            return _relay_success(reply)
        return explain_failure(triton, path)


def explain_failure(triton: TritonClient, triton_path: str) -> Response:
    """Answer a request Triton failed, with a status the caller can act on.

    A body that is not JSON is the caller's mistake (400). Otherwise the request
    is sent once more to read Triton's error; out-of-memory errors become 507,
    and a failure that does not repeat is answered with the result after all.
    """
    body = request.get_data()
    problem = _json_problem(body, request.headers.get("Content-Type", ""))
    if problem:
        return json_response(400, {"error": f"the request body is not valid JSON: {problem}"})
    reply = triton.request("POST", triton_path, body=body, headers=_triton_headers())
    if reply.status == 200:
        return _relay_success(reply)
    message = _error_message(reply.body)
    status = 507 if OUT_OF_MEMORY.search(message) else reply.status
    if "unknown model" in message or "is not found" in message:
        status = 404
    return json_response(status, {"error": message})


def _triton_headers() -> dict[str, str]:
    """Triton's form of the caller's request headers (binary+json -> its own header)."""
    headers = {"Content-Type": "application/json"}
    binary = BINARY_JSON.match(request.headers.get("Content-Type", ""))
    if binary:
        headers["Inference-Header-Content-Length"] = binary.group(1)
    return headers


def _relay_success(reply: TritonReply) -> Response:
    content_type = reply.headers.get("Content-Type", "application/json")
    header_size = reply.headers.get("Inference-Header-Content-Length")
    if header_size:
        content_type = (
            f"application/vnd.sagemaker-triton.binary+json;json-header-size={header_size}"
        )
    return Response(reply.body, status=200, content_type=content_type)


def _json_problem(body: bytes, content_type: str) -> str | None:
    """Why the JSON part of a request does not parse, or None if it does."""
    binary = BINARY_JSON.match(content_type)
    if binary:
        size = int(binary.group(1))
        if size == 0:
            return None  # a raw binary tensor: nothing to parse
        body = body[:size]
    try:
        json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return str(exc)
    return None


def _error_message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", errors="replace") or "Triton failed without a message"
