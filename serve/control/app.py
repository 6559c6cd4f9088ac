"""The Python side of the front: routes nginx hands over because they need Python.

nginx reaches this Flask app on a unix socket (never a public port) for:
- `/_serve/ping`: why the endpoint is not healthy, while Triton is loading,
  after a failure, or while stopping (nginx answers healthy pings itself);
- `/models` on a multi-model endpoint: loading, listing, describing and
  unloading models;
- `GET /execution-parameters` on a single-model endpoint: how a batch
  transform job should call it (serve/control/execution_parameters.py);
- `/_serve/metrics`: what the public port answers at SERVE_METRICS_PATH
  (Prometheus text; serve/front/metrics.py builds it);
- `/_serve/triton-metrics`: Triton's metrics alone, for
  SAGEMAKER_TRITON_METRICS_PORT (serve/triton/metrics.py).

Invocations that need Python (other content types and Accept, Triton's
refusals, streams) go to the payload service instead (serve/payloads/).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from serve.control.execution_parameters import ExecutionParameters
from serve.control.state import NOTICE_SECONDS, Phase, ServerState
from serve.errors import ArtifactError, BadRequest, ServeError
from serve.multi_model.registry import MAX_PAGE_SIZE, PAGE_SIZE, ModelRegistry
from serve.payloads.codecs import json_codec

log = logging.getLogger(__name__)


def json_response(status: int, payload: Mapping[str, object]) -> Response:
    return Response(json.dumps(payload), status=status, mimetype="application/json")


# A metrics exposition and its content type; None when Triton's could not be read.
Exposition = Callable[[], tuple[bytes | None, str]]


def create_control_app(
    state: ServerState,
    registry: ModelRegistry | None = None,
    execution_parameters: ExecutionParameters | None = None,
    metrics: Exposition | None = None,
    triton_metrics: Exposition | None = None,
) -> Flask:
    """The control app; `registry` adds the multi-model /models routes, `execution_parameters`
    batch transform's GET /execution-parameters, the others metrics."""
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
            # Triton did not answer nginx's health check. If it died, the supervisor is
            # about to say so, or to start it again: answer what it decides.
            phase, reason = state.after(Phase.READY, NOTICE_SECONDS)
        if phase is Phase.READY:
            reason = "Triton reports the model is not ready"
        # A multi-model endpoint restarting a crashed Triton is healthy: its models come
        # back without SageMaker replacing the instance.
        status = 200 if phase is Phase.RECOVERING else 503
        return json_response(status, {"status": phase.value, "reason": reason})

    for route, exposition in (("metrics", metrics), ("triton-metrics", triton_metrics)):
        if exposition is not None:
            app.add_url_rule(f"/_serve/{route}", route, _metrics_view(exposition), methods=["GET"])

    if registry is not None:
        _add_multi_model_routes(app, registry)
    if execution_parameters is not None:

        @app.get("/execution-parameters")
        def batch_execution_parameters() -> Response:
            return json_response(200, execution_parameters.answer())

    return app


def _metrics_view(exposition: Exposition) -> Callable[[], Response]:
    def view() -> Response:
        body, content_type = exposition()
        if body is None:
            message = "Triton's metrics could not be read; see the container log"
            return json_response(503, {"error": message})
        return Response(body, status=200, content_type=content_type)

    return view


def _add_multi_model_routes(app: Flask, registry: ModelRegistry) -> None:
    @app.get("/models")
    def list_models() -> Response:
        token = request.args.get("next_page_token") or request.args.get("nextPageToken")
        size = request.args.get("page_size", PAGE_SIZE, type=int)
        if not 0 < size <= MAX_PAGE_SIZE:
            raise BadRequest(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        return json_response(200, registry.page(token, size))

    @app.post("/models")
    def load_model() -> Response:
        body = json_codec.parse(request.get_data())  # 400 saying what is wrong
        if not isinstance(body, dict) or not {"model_name", "url"} <= body.keys():
            raise ArtifactError('the body must be {"model_name": NAME, "url": FOLDER}')
        log.info(
            "loading model %r from %r (target model %s)",
            body["model_name"],
            body["url"],
            request.headers.get("X-Amzn-SageMaker-Target-Model", "not given"),
        )
        model = registry.load(body["model_name"], body["url"])
        return json_response(200, {"status": "loaded", **model.describe()})

    @app.get("/models/<name>")
    def describe_model(name: str) -> Response:
        return json_response(200, registry.get(name).describe())

    @app.delete("/models/<name>")
    def unload_model(name: str) -> Response:
        registry.unload(name)
        return json_response(200, {"status": "unloaded", "modelName": name})
