"""The Python side of the front: routes nginx hands over because they need Python.

nginx reaches this Flask app on a unix socket (never a public port) for:
- `/_serve/ping`: why the endpoint is not healthy, while Triton is loading,
  after a failure, or while stopping (nginx answers healthy pings itself);
- `/_serve/invocation-error`: what went wrong when Triton answered 500 to an
  invocation. Triton's frontend answers 500 for a body that is not JSON; that
  is the caller's mistake, so it becomes a 400 that says so. Otherwise the
  request is sent once more to read Triton's error, and out-of-memory errors
  become 507, as Triton's own SageMaker frontend answers them.
"""

from __future__ import annotations

import json
import logging
import re

from flask import Flask, Response, request

from serve.errors import ServeError
from serve.state import Phase, ServerState
from serve.triton_client import TritonClient

log = logging.getLogger(__name__)

BINARY_JSON = re.compile(
    r"^application/vnd\.sagemaker-triton\.binary\+json;json-header-size=(\d+)", re.IGNORECASE
)
# Error texts that mean memory ran out (CUDA, host allocations, the Python backend).
OUT_OF_MEMORY = re.compile(
    r"out of memory|outofmemory|std::bad_alloc|cannot allocate memory|failed to allocate",
    re.IGNORECASE,
)


def json_response(status: int, payload: dict[str, object]) -> Response:
    return Response(json.dumps(payload), status=status, mimetype="application/json")


def create_control_app(state: ServerState, triton: TritonClient, invocation_path: str) -> Flask:
    app = Flask("serve.control")

    @app.errorhandler(ServeError)
    def serve_error(error: ServeError) -> Response:
        return json_response(error.status, {"error": error.message})

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
        body = request.get_data()
        content_type = request.headers.get("Content-Type", "")
        problem = _json_problem(body, content_type)
        if problem:
            return json_response(400, {"error": f"the request body is not valid JSON: {problem}"})
        headers = {"Content-Type": "application/json"}
        binary = BINARY_JSON.match(content_type)
        if binary:
            headers["Inference-Header-Content-Length"] = binary.group(1)
        reply = triton.request("POST", invocation_path, body=body, headers=headers)
        if reply.status == 200:
            # The failure did not repeat; the caller gets the answer after all.
            out_type = reply.headers.get("Content-Type", "application/json")
            header_size = reply.headers.get("Inference-Header-Content-Length")
            if header_size:
                out_type = (
                    f"application/vnd.sagemaker-triton.binary+json;json-header-size={header_size}"
                )
            return Response(reply.body, status=200, content_type=out_type)
        message = _error_message(reply.body)
        status = 507 if OUT_OF_MEMORY.search(message) else reply.status
        return json_response(status, {"error": message})

    return app


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
