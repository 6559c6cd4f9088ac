"""The public front: nginx on the SageMaker port, configured per run.

nginx (a C proxy) forwards native payloads to Triton at a cost of a few
percent, where a Python hop per request costs most of the throughput on small
models (shared/real-triton-here.md has the figures). Python is reached only
for the routes that need it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import unicodedata
from pathlib import Path
from urllib.parse import quote

import jinja2

from serve.errors import (
    EMPTY_BODY,
    ENCODED_BODY,
    GET_ONLY,
    MALFORMED_BINARY_TYPE,
    POST_ONLY,
    ConfigError,
    front_errors,
    invocation_timed_out,
)
from serve.front.access_log import ACCESS_LOG_FORMAT
from serve.machine.sockets import NGINX_WORKER_GROUP, NGINX_WORKER_USER
from serve.multi_model.registry import longest_answer
from serve.payloads.formats import nginx_routes
from serve.payloads.service import INFERENCE_HEADER, MODEL_HEADER
from serve.payloads.v2 import HEADER_LENGTH
from serve.payloads.writers import JsonWriter
from serve.sagemaker.contract import (
    BIDIRECTIONAL_ROUTE,
    BINARY_CONTENT_TYPE,
    BINARY_JSON,
    DIRECT_MODEL_NAME,
    IDENTITY_ENCODING,
    SESSION_HEADER,
    TARGET_MODEL_NAME,
    full_match,
    nginx_variable,
    pcre,
)
from serve.sagemaker.custom_attributes import HEADER as CUSTOM_ATTRIBUTES_HEADER
from serve.settings import MAX_CONNECTIONS, Settings
from serve.triton.client import LIVE_PATH


def nginx_string(value: object) -> str:
    """`value` as one quoted nginx argument: no space, `;`, `{` or `#` in it ends it.

    nginx reads `\\"` and `\\\\` inside double quotes; it has no escape for `$`
    (a variable in the directives that take them, the access log's among them)
    nor means to carry a control character, so those are refused, naming the
    setting the paths come from.
    """
    text = str(value)
    for character in text:
        if character == "$" or unicodedata.category(character) in ("Cc", "Cs"):
            raise ConfigError(
                f"the workspace path {text!r} holds {character!r}, which nginx's "
                "configuration cannot carry; set SERVE_WORKDIR (or TMPDIR) to a folder "
                "without it"
            )
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("serve.front", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)
_TEMPLATES.filters["nginx_string"] = nginx_string
# Workers never need root (the sockets they reach are theirs: serve/machine/sockets.py).
UNPRIVILEGED_USER = f"{NGINX_WORKER_USER} {NGINX_WORKER_GROUP}"
# Headers the front sets to talk to its internal services: the payload service's
# model and route, and Triton's binary header length. nginx sets every one of them
# on every upstream request (empty unless the front means it), so a client's copy
# never reaches a service.
INTERNAL_HEADERS = (MODEL_HEADER, INFERENCE_HEADER, HEADER_LENGTH)
# The payload service answers an invocation Triton took too long for with its own 504
# (after SAGEMAKER_MODEL_SERVER_TIMEOUT); nginx waits this much longer for that answer.
SERVICE_MARGIN_SECONDS = 5
# nginx workers, at most, unless SERVE_NGINX_WORKERS says: on two cores (ml.c5.large), a
# second worker lets nginx run on whichever core Triton's threads leave free, where one
# worker makes every request wait for that one process (docs/benchmarks.md: two-core
# front pieces).
MAX_WORKERS = 2


def worker_count(setting: int | None, cpus: int) -> int:
    """nginx's worker_processes: SERVE_NGINX_WORKERS, else `cpus` usable CPUs up to MAX_WORKERS."""
    return setting if setting is not None else max(1, min(MAX_WORKERS, cpus))


@dataclasses.dataclass(frozen=True)
class FrontModel:
    """A model of a single-model endpoint, as nginx routes invocations of it."""

    name: str
    # Decoupled models answer through the payload service (streams).
    decoupled: bool = False
    # So do models that set the answer's custom attributes (serve/sagemaker/custom_attributes.py).
    custom_attributes: bool = False
    # Who answers its v2 JSON invocations: Triton or serve's writers (serve/payloads/writers.py).
    writes_json: JsonWriter = JsonWriter.TRITON
    # One BYTES input: octet-stream, text/plain and image/* bodies may be its raw input,
    # so the payload service reads them; other models' go to Triton as v2 JSON.
    takes_bytes: bool = False
    # A declared text-generation model (SERVE_TEXT_GENERATION_MODELS): its JSON bodies go to
    # the payload service (a request schema's), but for v2 requests, which go to Triton.
    text_generation: bool = False
    # A sequence model, or an ensemble with one among its steps: the payload service
    # refuses plain requests naming a session's or stream's sequence (serve/sessions/).
    stateful: bool = False


# Model names nginx can match in target_model=NAME and write into its config unquoted.
TARGET_NAME = full_match(TARGET_MODEL_NAME)


@dataclasses.dataclass(frozen=True)
class FrontConfig:
    settings: Settings
    workdir: Path
    triton_port: int
    control_socket: Path
    # The model /invocations runs; None on a multi-model endpoint.
    default_model: str | None
    worker_processes: int = 1
    # The models target_model=NAME can pick (single-model endpoints).
    models: tuple[FrontModel, ...] = ()
    # The WebSocket route of bidirectional streams (serve/sessions/bidirectional.py).
    bidirectional: bool = False
    # The v2 JSON writers' processes (serve/payloads/writers.py); 0: Triton writes it all.
    v2_json_writers: int = 0

    def invocation_path(self) -> str | None:
        """Triton's route for /invocations; the inference types are named after its routes."""
        if self.default_model is None:
            return None
        model = quote(self.default_model, safe="")
        return f"/v2/models/{model}/{self.settings.inference_type}"

    def ping_path(self) -> str:
        if self.settings.ping_mode == "live" or self.default_model is None:
            return LIVE_PATH
        return f"/v2/models/{quote(self.default_model, safe='')}/ready"

    def access_log(self) -> Path | None:
        """nginx's access log, which the front's metrics follow; None while those are off.

        They are on while GET /metrics (SERVE_METRICS_PATH) or SERVE_METRICS_PORT is.
        """
        if self.settings.serve_metrics_port is None and self.settings.metrics_path is None:
            return None
        return self.workdir / "access.log"

    def pid_file(self) -> Path:
        return self.workdir / "nginx.pid"

    def render(self) -> str:
        return _TEMPLATES.get_template("nginx.conf.j2").render(
            worker_user=UNPRIVILEGED_USER if os.geteuid() == 0 else "",
            worker_processes=self.worker_processes,
            workdir=self.workdir,
            pid_file=self.pid_file(),
            access_log=self.access_log(),
            access_log_format=ACCESS_LOG_FORMAT,
            error_log_level="warn",
            worker_connections=MAX_CONNECTIONS,
            max_body_bytes=self.settings.max_body_bytes,
            body_buffer_bytes=self.settings.body_buffer_bytes,
            front_errors=front_errors(
                self.settings.max_body_bytes,
                self._public_routes(),
                self.settings.max_body_set_by,
            ),
            triton_port=self.triton_port,
            control_socket=self.control_socket,
            listen_address="0.0.0.0",
            port=self.settings.port,
            ping_path=self.ping_path(),
            invocation_path=self.invocation_path(),
            streaming=self.settings.inference_type == "generate_stream",
            multi_model=self.settings.multi_model,
            metrics_path=self.settings.metrics_path,
            # SAGEMAKER_TRITON_ALLOW_METRICS: nginx answers Triton's metrics on their port.
            triton_metrics_port=self.settings.metrics_port if self.settings.allow_metrics else None,
            models_read_timeout=round(longest_answer(self.settings.model_load_timeout)),
            **self._invocation_timeouts(),
            # A model that is not loaded is a 400 from Triton; the payload service
            # turns it into the contract's 404. 501: a decoupled model, which streams.
            explained_statuses="400 404 500 501" if self.settings.multi_model else "400 500 501",
            internal_headers=INTERNAL_HEADERS,
            **shared_rules(),
            # How each request Content-Type is routed, from the payload formats' registry.
            **nginx_routes(),
            model_header=MODEL_HEADER,
            inference_header=INFERENCE_HEADER,
            binary_length_header=HEADER_LENGTH,
            **self._payload_routes(),
            bidirectional_socket=self.bidirectional_socket() if self.bidirectional else None,
            bidirectional_route=BIDIRECTIONAL_ROUTE,
            bidirectional_route_pattern=pcre(re.escape(BIDIRECTIONAL_ROUTE)),
        )

    def _invocation_timeouts(self) -> dict[str, object]:
        """How long nginx waits for Triton and for the payload service (milliseconds)."""
        seconds = self.settings.invocation_timeout
        return {
            "invocation_timeout_ms": math.ceil(seconds * 1000),
            "service_timeout_ms": math.ceil((seconds + SERVICE_MARGIN_SECONDS) * 1000),
            "invocation_timed_out": invocation_timed_out(seconds),
        }

    def _public_routes(self) -> str:
        metrics = self.settings.metrics_path
        if self.settings.multi_model:
            routes = ["GET /ping", "/models", "POST /models/NAME/invoke"]
        else:
            routes = ["GET /ping", "GET /execution-parameters", "POST /invocations"]
        if metrics is not None:
            routes.insert(-1, f"GET {metrics}")
        return ", ".join(routes[:-1]) + " and " + routes[-1]

    def bidirectional_socket(self) -> Path:
        """Where the bidirectional stream server listens for nginx."""
        return self.workdir / "bidirectional.sock"

    def payload_socket(self) -> Path:
        """Where the payload service (serve/payloads/service.py) listens for nginx."""
        return self.workdir / "payloads.sock"

    def writer_sockets(self) -> list[Path]:
        """The writers' sockets (serve/payloads/writers.py); none if no model needs them:
        one whose v2 JSON they write (only Triton's infer route answers v2 JSON with outputs
        to write), or a text-generation model."""
        json_writers = self.settings.inference_type == "infer" and any(
            m.writes_json for m in self.models
        )
        if not json_writers and not any(m.text_generation for m in self.models):
            return []
        return [self.workdir / f"writer-{i}.sock" for i in range(self.v2_json_writers)]

    def _payload_routes(self) -> dict[str, object]:
        """What the template needs to route payloads and target_model (serve/payloads/)."""
        inference = "infer" if self.settings.multi_model else self.settings.inference_type
        # generate_stream streams whatever the model; the other routes need the payload
        # service for decoupled models (infer refuses them, Triton 2.51's generate
        # answers their failures with 200). On the infer route, a model's custom
        # attributes become a header there too. Every request for a stateful model goes
        # there, which checks the sequence it names.
        by_name = {model.name: model for model in self.models}
        writers = self.writer_sockets()

        def target(name: str) -> dict[str, object]:
            model = by_name.get(name, FrontModel(name))
            payloads = (
                (model.decoupled and inference != "generate_stream")
                or (model.custom_attributes and inference == "infer")
                or model.stateful
            )
            return {
                "key": name,
                "header": quote(name, safe=""),
                "path": f"/v2/models/{quote(name, safe='')}/{inference}",
                "payloads": int(payloads),
                "bytes": int(model.takes_bytes),
                "text": int(model.text_generation),
                "writers": int(model.writes_json) if writers else 0,
                # The payload service of its requests: serve's own keeps the sessions'
                # state and checks every stateful model's request against it.
                "service": (
                    "writers"
                    if writers and model.text_generation and not model.stateful
                    else "payloads"
                ),
            }

        names = sorted(by_name.keys() | ({self.default_model} if self.default_model else set()))
        return {
            "payload_socket": self.payload_socket(),
            "writer_sockets": writers,
            "quiet_counts": decimal_below(self.settings.v2_json_writers_at),
            "payload_inference": inference,
            "default_target": target(self.default_model) if self.default_model else None,
            "targets": [target(name) for name in names if TARGET_NAME.match(name)],
            "served_models": ", ".join(n for n in names if TARGET_NAME.match(n)) or "none",
        }

    def write(self) -> Path:
        """Write the config where nginx keeps its run files; returns its path."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # nginx's unprivileged workers must reach the control socket.
            self.workdir.chmod(0o755)
        path = self.workdir / "nginx.conf"
        path.write_text(self.render(), encoding="utf-8")
        return path


def decimal_below(limit: int) -> str | None:
    """A PCRE that matches the decimal numbers 0 to `limit` - 1 (None for no number).

    nginx's maps compare text, not numbers; this lets one regex entry test a count
    such as $connections_writing against a setting of any size.
    """
    if limit <= 0:
        return None
    digits = str(limit)
    # Every number with fewer digits than `limit`, then those with as many, digit by digit.
    branches = [
        f"[1-9][0-9]{{{length - 1}}}" if length > 1 else "[0-9]" for length in range(1, len(digits))
    ]
    for place, digit in enumerate(digits):
        lowest = "1" if place == 0 and len(digits) > 1 else "0"
        if digit > lowest:
            rest = len(digits) - place - 1
            branches.append(f"{digits[:place]}[{lowest}-{int(digit) - 1}]" + "[0-9]" * rest)
    return "(?:" + "|".join(branches) + ")"


def shared_rules() -> dict[str, str]:
    """The rules nginx applies as Python does: patterns in PCRE, messages as JSON bodies."""
    return {
        "binary_json": pcre(re.escape(BINARY_JSON)),
        "binary_json_type": BINARY_JSON,
        "binary_content_type": pcre(BINARY_CONTENT_TYPE),
        "direct_model_name": pcre(DIRECT_MODEL_NAME),
        "identity_encoding": pcre(IDENTITY_ENCODING),
        "target_model_name": pcre(TARGET_MODEL_NAME),
        "session_header": nginx_variable(SESSION_HEADER),
        "custom_attributes_header": nginx_variable(CUSTOM_ATTRIBUTES_HEADER),
        "post_only": json.dumps({"error": POST_ONLY}),
        "get_only": json.dumps({"error": GET_ONLY}),
        "empty_body": json.dumps({"error": EMPTY_BODY}),
        "malformed_binary_type": json.dumps({"error": MALFORMED_BINARY_TYPE}),
        "encoded_body": json.dumps({"error": ENCODED_BODY}),
    }


def nginx_binary() -> Path:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise ConfigError(
            "nginx was not found; install it (apt-get install nginx-light) - the image "
            "has it, and `make setup` installs it for local runs"
        )
    return Path(found)


def nginx_argv(config_path: Path) -> list[str]:
    return [str(nginx_binary()), "-c", str(config_path), "-p", str(config_path.parent)]
