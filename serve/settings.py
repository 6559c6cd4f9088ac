"""Every environment variable `serve` honours, declared once and read once at start-up.

SageMaker configures a container only through its environment, so this module
is the one place that knows each variable: its name, default, parser and the
line of documentation the tables of docs/configuration.md are generated from
(`python -m serve.settings` prints them; a test keeps them in step).
`Settings.from_environ` validates everything up front: a bad value stops
`serve` before any process starts, with a message naming the variable and
what it accepts.

The `SAGEMAKER_TRITON_*` variables keep the meaning and defaults of NVIDIA's
`docker/sagemaker/serve` script, so an endpoint configured for the official
image behaves the same here.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from serve.errors import ConfigError

PingMode = Literal["ready", "live"]
InferenceType = Literal["infer", "generate", "generate_stream"]
BatchStrategy = Literal["SINGLE_RECORD", "MULTI_RECORD"]
INFERENCE_TYPES: tuple[InferenceType, ...] = ("infer", "generate", "generate_stream")
# How a text-generation model's inputs are filled: the mappings of serve/payloads/llm/mappings.py
# (tests/payloads/llm/ checks the two lists agree; settings sit below that layer).
TEXT_GENERATION_INPUTS = ("auto", "tensorrt_llm", "vllm")

MEBIBYTE = 1024 * 1024
# SageMaker's request body caps: InvokeEndpoint (6 MB, 6,291,456 bytes), batch
# transform's MaxPayloadInMB at most, and InvokeEndpointAsync's input in S3.
REALTIME_MAX_BODY_BYTES = 6 * MEBIBYTE
BATCH_MAX_BODY_BYTES = 100 * MEBIBYTE
ASYNC_MAX_BODY_BYTES = 1024 * MEBIBYTE
# The largest values the programs that get them take: sizes in bytes go to nginx
# (off_t) and Triton's backends (int64), thread counts to Triton's int32 flags,
# seconds to Triton's int32 flags and nginx's millisecond timers. A larger
# number stops start-up here, named, instead of failing there.
MAX_BYTES = 2**63 - 1
MAX_THREADS = 2**31 - 1
MAX_SECONDS = 2**31 - 1
# SERVE_V2_JSON_WRITERS at most: processes, each a payload service.
MAX_WRITERS = 64
# Connections one nginx worker holds (worker_connections in nginx's template).
MAX_CONNECTIONS = 4096
# nginx's own limit on worker processes (NGX_MAX_PROCESSES).
MAX_NGINX_WORKERS = 1024
# The most one model or environment archive may unpack to, by default: generous,
# since a model can be tens of GB (serve/artifacts/archives.py's ExtractionLimits).
MAX_ARCHIVE_BYTES = 50 * 1024**3
MAX_ARCHIVE_MEMBERS = 100_000
# What one adapted request may hold (serve/payloads/limits.py): records, and the Triton
# requests they are split into (each about 1 KB in the payload service until answered).
MAX_RECORDS = 20_000_000
MAX_CHUNKS = 16_384
# What SERVE_METRICS_PATH may be: nginx matches it exactly, so no pattern characters.
METRICS_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")
# Paths the public port answers otherwise (the front's own internal ones included).
PUBLIC_ROUTES = frozenset({"", "/ping", "/invocations", "/models"})
PUBLIC_ROUTE_PREFIXES = ("/models/", "/_serve/")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}

Table = Literal["sagemaker", "serve"]
TABLE_TITLES: dict[Table, str] = {
    "sagemaker": "Variables SageMaker sets, and those NVIDIA's `serve` script honours "
    "(same meaning and defaults)",
    "serve": "This image's own",
}
# A parser gets the environment, the variable's name and the fields read so far
# (declaration order), for defaults that depend on another setting; None: unset
# (the field keeps its default), OFF: turned off (the field is None).
Parser = Callable[["_Reader", str, Mapping[str, Any]], object]
OFF = object()


@dataclasses.dataclass(frozen=True)
class Variable:
    """One environment variable: what the configuration tables say of it, and how it is read."""

    name: str
    parse: Parser
    doc: str
    default_doc: str
    table: Table
    aliases: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Its name and its aliases: every variable that sets it."""
        return (self.name, *self.aliases)

    def row(self) -> str:
        names = " (or ".join(f"`{n}`" for n in self.names)
        names += ")" * len(self.aliases)
        return f"| {names} | {self.default_doc} | {self.doc} |"


def _shown(default: object) -> str:
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, Path):
        return f"`{default}`"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def setting(
    name: str,
    default: Any,
    parse: Parser,
    doc: str,
    *,
    default_doc: str | None = None,
    table: Table = "serve",
    aliases: tuple[str, ...] = (),
) -> Any:
    """A `Settings` field read from variable `name` (a dataclass field, for the type checker)."""
    variable = Variable(name, parse, doc, default_doc or _shown(default), table, aliases)
    return dataclasses.field(default=default, metadata={"variable": variable})


def _text(env: _Reader, name: str, _: Mapping[str, Any]) -> str | None:
    return env.text(name)


def _set_text(env: _Reader, name: str, _: Mapping[str, Any]) -> str | None:
    """The text, even empty: for variables where set-but-empty means something."""
    return env.set_text(name)


def _path(env: _Reader, name: str, _: Mapping[str, Any]) -> Path | None:
    return env.path(name)


def _boolean(env: _Reader, name: str, _: Mapping[str, Any]) -> bool | None:
    return env.boolean(name)


def _port(env: _Reader, name: str, _: Mapping[str, Any]) -> int | None:
    return env.port(name)


def _seconds(env: _Reader, name: str, _: Mapping[str, Any]) -> float | None:
    return env.positive_float(name)


def _positive(maximum: int | None = MAX_BYTES) -> Parser:
    return lambda env, name, _: env.positive_int(name, maximum)


def _choice(*allowed: str) -> Parser:
    return lambda env, name, _: env.choice(name, allowed)


@dataclasses.dataclass(frozen=True)
class PortRange:
    """`SAGEMAKER_SAFE_PORT_RANGE`: where every listener but the public one must be."""

    low: int
    high: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"


def _ping_mode(env: _Reader, name: str, values: Mapping[str, Any]) -> str:
    allowed = ("ready", "live")
    chosen = env.choice(name, allowed) or env.choice("SAGEMAKER_TRITON_PING_MODE", allowed)
    return chosen or ("live" if values["multi_model"] else "ready")


def _serve_metrics_port(env: _Reader, name: str, values: Mapping[str, Any]) -> object:
    """A port, "off", or unset: next to Triton's metrics when those are on."""
    value = env.text(name)
    if value is not None and value.lower() in _FALSE:
        return OFF
    if value is not None:
        return env.port(name)
    if not values["allow_metrics"]:
        return None
    port = int(values["metrics_port"]) + 1
    if port > 65535:
        raise ConfigError(
            f"SAGEMAKER_TRITON_METRICS_PORT={port - 1} leaves no port after it for the "
            f"front's metrics; set {name} (or {name}=off)"
        )
    return port


def _metrics_path(env: _Reader, name: str, _: Mapping[str, Any]) -> object:
    """A path of the public port, "off", or unset (/metrics)."""
    value = env.text(name)
    if value is None:
        return None
    if value.lower() in _FALSE:
        return OFF
    if not METRICS_PATH.fullmatch(value):
        raise ConfigError(
            f"{name}={value!r} must be a path of letters, digits and . _ ~ - /, "
            "starting with / (such as /metrics), or off"
        )
    if value.rstrip("/") in PUBLIC_ROUTES or value.startswith(PUBLIC_ROUTE_PREFIXES):
        raise ConfigError(
            f"{name}={value!r} is a route the endpoint answers already; "
            "choose another path, such as /metrics"
        )
    return value


def _body_limit(env: _Reader, values: Mapping[str, Any]) -> tuple[int, str]:
    """The request body limit and the variable that set it."""
    explicit = env.positive_int("SERVE_MAX_BODY_BYTES")
    # A payload limit of 0 asks for bodies of any size in chunks (MaxPayloadInMB=0, for
    # the algorithms that take them); the batch cap applies then.
    if explicit is not None:
        return explicit, "SERVE_MAX_BODY_BYTES"
    if values["max_payload_mb"]:
        return values["max_payload_mb"] * MEBIBYTE, "SAGEMAKER_MAX_PAYLOAD_IN_MB"
    if values["batch"]:
        return BATCH_MAX_BODY_BYTES, "SAGEMAKER_BATCH"
    if values["async_inference"]:
        return ASYNC_MAX_BODY_BYTES, "SERVE_ASYNC_INFERENCE"
    return REALTIME_MAX_BODY_BYTES, "SERVE_MAX_BODY_BYTES"


def _body_buffer(env: _Reader, name: str, values: Mapping[str, Any]) -> int:
    return min(env.positive_int(name) or REALTIME_MAX_BODY_BYTES, values["max_body_bytes"])


def _shell_words(env: _Reader, name: str, _: Mapping[str, Any]) -> tuple[str, ...]:
    return env.shell_words(name)


def _names(env: _Reader, name: str, _: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(part.strip() for part in (env.text(name) or "").split(",") if part.strip())


def _folders(env: _Reader, name: str, _: Mapping[str, Any]) -> tuple[Path, ...]:
    return tuple(Path(part) for part in (env.text(name) or "").split(":") if part)


# What serve's workspace path may hold: it lands in nginx.conf (quoted there) and in
# the repository's paths, which Triton's Python backend hands to a shell unquoted when
# it starts a model's stub: no spaces, quotes, `;`, `$` or other shell syntax.
WORKSPACE_PATH = re.compile(r"[A-Za-z0-9._/+,:@=%-]+")


def check_workspace_path(path: Path, variable: str) -> Path:
    """`path`, or ConfigError naming `variable` when a character of it is not allowed."""
    text = str(path)
    if not WORKSPACE_PATH.fullmatch(text):
        character = next(c for c in text if not WORKSPACE_PATH.fullmatch(c))
        raise ConfigError(
            f"{variable}={text!r} holds {character!r}: the workspace's paths go into nginx's "
            "configuration and through the shell Triton's Python backend starts models with; "
            "choose a folder of letters, digits and . _ / + , : @ = % -"
        )
    return path


def _workdir(env: _Reader, name: str, _: Mapping[str, Any]) -> Path | None:
    path = env.path(name)
    return None if path is None else check_workspace_path(path, name)


def _env_cache(env: _Reader, name: str, _: Mapping[str, Any]) -> Path:
    return env.path(name) or Path(tempfile.gettempdir()) / "serve-env-cache"


def _payload_mb(env: _Reader, name: str, _: Mapping[str, Any]) -> int | None:
    return env.whole_number(name, MAX_BYTES // MEBIBYTE)


def _log_verbose(env: _Reader, name: str, _: Mapping[str, Any]) -> str | None:
    return env.text(name)


METRICS_DOC = "[container/monitoring/README.md](../container/monitoring/README.md)"


@dataclasses.dataclass(frozen=True)
class Settings:
    """The container's configuration. Fields are read in this order (later ones may
    depend on earlier ones); each names its variable, default and documentation."""

    opt_ml: Path = setting(
        "OPT_ML", Path("/opt/ml"), _path, "root of SageMaker's paths (`model/`, `models/`)"
    )
    multi_model: bool = setting(
        "SAGEMAKER_MULTI_MODEL",
        False,
        _boolean,
        "`true`: a multi-model endpoint (models load from `$OPT_ML/models` through `/models`)",
        table="sagemaker",
    )
    batch: bool = setting(
        "SAGEMAKER_BATCH",
        False,
        _boolean,
        "`true` in a batch transform job (SageMaker sets it): request bodies up to 100 MB",
        table="sagemaker",
    )
    batch_strategy: BatchStrategy | None = setting(
        "SAGEMAKER_BATCH_STRATEGY",
        None,
        _choice("SINGLE_RECORD", "MULTI_RECORD"),
        "a transform job's strategy, answered by `GET /execution-parameters` as it is",
        table="sagemaker",
    )
    max_concurrent_transforms: int | None = setting(
        "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS",
        None,
        _positive(MAX_THREADS),
        "a transform job's concurrency, answered by `GET /execution-parameters` as it is",
        table="sagemaker",
    )
    max_payload_mb: int | None = setting(
        "SAGEMAKER_MAX_PAYLOAD_IN_MB",
        None,
        _payload_mb,
        "a transform job's payload limit, answered by `GET /execution-parameters` as it is; "
        "it also sets the body limit unless `SERVE_MAX_BODY_BYTES` does (0, chunked bodies "
        "of any size, leaves it)",
        table="sagemaker",
    )
    port: int = setting(
        "SAGEMAKER_BIND_TO_PORT", 8080, _port, "the public (nginx) port", table="sagemaker"
    )
    safe_port_range: PortRange | None = setting(
        "SAGEMAKER_SAFE_PORT_RANGE",
        None,
        lambda env, name, _: env.port_range(name),
        "every other port is picked inside it (Triton's internal HTTP port; gRPC and "
        "metrics ports must lie in it)",
        table="sagemaker",
    )
    default_model_name: str | None = setting(
        "SAGEMAKER_TRITON_DEFAULT_MODEL_NAME",
        None,
        _text,
        "the model `/invocations` runs",
        default_doc="the only folder",
        table="sagemaker",
    )
    ping_mode: PingMode = setting(
        "SAGEMAKER_TRITON_OVERRIDE_PING_MODE",
        "ready",
        _ping_mode,
        "`/ping` checks the default model's readiness (`ready`), or that Triton is live",
        default_doc="`ready` (`live` for multi-model)",
        table="sagemaker",
        aliases=("SAGEMAKER_TRITON_PING_MODE",),
    )
    inference_type: InferenceType = setting(
        "SAGEMAKER_TRITON_INFERENCE_TYPE",
        "infer",
        _choice(*INFERENCE_TYPES),
        "`/invocations` calls Triton's `infer`, `generate` or `generate_stream` route",
        table="sagemaker",
    )
    allow_grpc: bool = setting(
        "SAGEMAKER_TRITON_ALLOW_GRPC",
        False,
        _boolean,
        "`--allow-grpc`: Triton's gRPC endpoint, public when on",
        table="sagemaker",
    )
    grpc_port: int = setting(
        "SAGEMAKER_TRITON_GRPC_PORT", 8001, _port, "`--grpc-port`", table="sagemaker"
    )
    allow_metrics: bool = setting(
        "SAGEMAKER_TRITON_ALLOW_METRICS",
        False,
        _boolean,
        "Triton's metrics on `SAGEMAKER_TRITON_METRICS_PORT` (public when on); Triton itself "
        "listens on loopback and nginx answers there, with the `namespace` label naming "
        "`/opt/ml/model` rather than `serve`'s temporary copy",
        table="sagemaker",
    )
    metrics_port: int = setting(
        "SAGEMAKER_TRITON_METRICS_PORT", 8002, _port, "Triton's metrics port", table="sagemaker"
    )
    log_verbose: str = setting(
        "SAGEMAKER_TRITON_LOG_VERBOSE",
        "true",
        _log_verbose,
        "`--log-verbose`, as given. On, as in NVIDIA's image; on two cores it costs 10 % to "
        "a third of the throughput (below): set `false` where the request rate matters "
        "(`make serve` does, unless `VERBOSE=1`)",
        table="sagemaker",
    )
    log_info: str | None = setting(
        "SAGEMAKER_TRITON_LOG_INFO",
        None,
        _text,
        "`--log-info`",
        default_doc="Triton's",
        table="sagemaker",
    )
    log_warning: str | None = setting(
        "SAGEMAKER_TRITON_LOG_WARNING",
        None,
        _text,
        "`--log-warning`",
        default_doc="Triton's",
        table="sagemaker",
    )
    log_error: str | None = setting(
        "SAGEMAKER_TRITON_LOG_ERROR",
        None,
        _text,
        "`--log-error`",
        default_doc="Triton's",
        table="sagemaker",
    )
    thread_count: int | None = setting(
        "SAGEMAKER_TRITON_THREAD_COUNT",
        None,
        _positive(MAX_THREADS),
        "`--http-thread-count`: the HTTP frontend serves SageMaker traffic here "
        "(`--sagemaker-thread-count` in NVIDIA's image)",
        default_doc="Triton's (8)",
        table="sagemaker",
    )
    buffer_manager_thread_count: int | None = setting(
        "SAGEMAKER_TRITON_BUFFER_MANAGER_THREAD_COUNT",
        None,
        _positive(MAX_THREADS),
        "`--buffer-manager-thread-count`",
        default_doc="Triton's",
        table="sagemaker",
    )
    shm_default_byte_size: int = setting(
        "SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE",
        16 * MEBIBYTE,
        _positive(),
        "`--backend-config=python,shm-default-byte-size` (lowered to fit `/dev/shm`)",
        table="sagemaker",
    )
    shm_growth_byte_size: int = setting(
        "SAGEMAKER_TRITON_SHM_GROWTH_BYTE_SIZE",
        MEBIBYTE,
        _positive(),
        "`--backend-config=python,shm-growth-byte-size`",
        table="sagemaker",
    )
    model_load_gpu_limit: str | None = setting(
        "SAGEMAKER_TRITON_MODEL_LOAD_GPU_LIMIT",
        None,
        _text,
        "`--model-load-gpu-limit=<gpu>:<fraction>` for each GPU",
        table="sagemaker",
    )
    tensorflow_version: str | None = setting(
        "SAGEMAKER_TRITON_TENSORFLOW_VERSION",
        None,
        _text,
        "`--backend-config=tensorflow,version`",
        table="sagemaker",
    )
    model_namespacing: str = setting(
        "SAGEMAKER_TRITON_DISABLE_MODEL_NAMESPACING",
        "true",
        _text,
        "`--model-namespacing`, passed as given exactly as NVIDIA's script does: set "
        "`false` to turn namespacing off",
        table="sagemaker",
    )
    additional_args: tuple[str, ...] = setting(
        "SAGEMAKER_TRITON_ADDITIONAL_ARGS",
        (),
        _shell_words,
        "extra `tritonserver` flags, shell-quoted, decided per flag in one table "
        "(serve/triton/command.py's FLAGS): flags that decide what listens where, that "
        "`serve` sets itself or that would undo what it prepared stop start-up naming the "
        "flag; the Python backend's shm sizes, TensorFlow's version and "
        "`--model-namespacing` are taken as their settings; its `shm-region-prefix-name` "
        "stops start-up (serve names the regions, unique to each serve, to remove those a "
        "crashed Triton leaves); the rest pass on",
        default_doc="unset",
        table="sagemaker",
    )
    invocation_timeout: float = setting(
        "SAGEMAKER_MODEL_SERVER_TIMEOUT",
        3600.0,
        _seconds,
        "seconds an invocation may take in every layer of the front (nginx, the payload "
        "service); then 504 naming the variable. AWS's inference toolkit reads the same "
        "name (its default is 60); 3600 covers asynchronous inference and batch transform, "
        "which wait up to an hour",
        table="sagemaker",
    )
    triton_bin: Path | None = setting(
        "TRITONSERVER_BIN",
        None,
        _path,
        "the server: else `/opt/tritonserver/bin/tritonserver`, else `PATH`, else the "
        "`nvidia-pytriton` package",
        default_doc="found",
    )
    model_python: Path | None = setting(
        "SERVE_MODEL_PYTHON",
        None,
        _path,
        "the interpreter whose packages Python-backend models import: its folder goes first "
        "on Triton's `PATH`, where the stub finds its prefix. In the image `serve` runs from "
        "its own venv, so models see the base image's Python and the model libraries",
        default_doc="the Python running `serve` (the image sets `/usr/bin/python3`)",
    )
    triton_user: str | None = setting(
        "SERVE_TRITON_USER",
        None,
        _text,
        "the user Triton, its Python-backend stubs, model code and environments' "
        "`conda-unpack` run as when `serve` runs as root (serve and nginx's master stay "
        "root): model code then cannot write `/opt/ml/model`, serve's workspace or the "
        "environment cache, nor reach serve's internal sockets. `root` keeps them root, "
        "for models that truly need it (installing packages into the image's Python at "
        "load time, binding a port below 1024, reading files only root may); a name given "
        "must exist. Ignored when `serve` is not root (it cannot change user)",
        default_doc="`triton-server` where that user exists (NVIDIA's images: uid 1000), "
        "else serve's own user",
    )
    extra_backends: tuple[Path, ...] = setting(
        "SERVE_EXTRA_BACKENDS",
        (),
        _folders,
        "colon-separated folders of extra Triton backends (one subfolder each), added "
        "beside Triton's own without rebuilding the image",
        default_doc="unset",
    )
    metrics_path: str | None = setting(
        "SERVE_METRICS_PATH",
        "/metrics",
        _metrics_path,
        "the public port answers `GET` here with Prometheus text: Triton's metrics (their "
        "`namespace` label naming `/opt/ml/model` rather than the prepared copy, so series "
        "survive restarts) and the front's own. A path moves it (to match SageMaker's "
        f"`ContainerMetricsConfig`), `off` turns it off ({METRICS_DOC})",
        default_doc="`/metrics`",
    )
    serve_metrics_port: int | None = setting(
        "SERVE_METRICS_PORT",
        None,
        _serve_metrics_port,
        "the front's own Prometheus metrics on a port of their own (requests, codes, "
        "latency per route and content type, model loads, environment cache); a port turns "
        f"them on, `off` turns them off ({METRICS_DOC})",
        default_doc="Triton's metrics port + 1 when `SAGEMAKER_TRITON_ALLOW_METRICS` is on, "
        "else off",
    )
    async_inference: bool = setting(
        "SERVE_ASYNC_INFERENCE",
        False,
        _boolean,
        "`true`: an asynchronous endpoint, whose bodies reach 1 GB. SageMaker tells the "
        "container nothing documented about asynchronous inference, so this is set on the "
        "model (`Environment`), or `SERVE_MAX_BODY_BYTES` directly",
    )
    max_body_bytes: int = setting(
        "SERVE_MAX_BODY_BYTES",
        REALTIME_MAX_BODY_BYTES,
        lambda env, name, values: _body_limit(env, values)[0],
        "larger request bodies get 413 naming the variable that set the limit. Triton "
        "releases that limit bodies themselves (`--http-max-input-size`, read from their "
        "`--help`) get 4x it, since an adapted request's binary tensors can outweigh its text",
        default_doc="SageMaker's cap: 6291456 (6 MB, real-time); `SAGEMAKER_MAX_PAYLOAD_IN_MB` "
        "MiB, or 100 MiB with `SAGEMAKER_BATCH=true` alone; 1 GiB with "
        "`SERVE_ASYNC_INFERENCE=true`",
    )
    # The variables the environment set (not empty), for rules that must tell a value
    # given from a default (serve/triton/command.py's merge of ADDITIONAL_ARGS).
    set_variables: frozenset[str] = dataclasses.field(
        default=frozenset(),
        metadata={"derive": lambda env, values: env.set_names(variables())},
    )
    # The variable that decided max_body_bytes, named in the 413's message.
    max_body_set_by: str = dataclasses.field(
        default="SERVE_MAX_BODY_BYTES",
        metadata={"derive": lambda env, values: _body_limit(env, values)[1]},
    )
    body_buffer_bytes: int = setting(
        "SERVE_BODY_BUFFER_BYTES",
        REALTIME_MAX_BODY_BYTES,
        _body_buffer,
        "bodies up to this size stay in memory in nginx and the payload service; larger "
        "ones are written to the workspace's disk as they arrive, so memory does not grow "
        "with the body. Allow disk for two copies of the largest body in flight per "
        "concurrent request",
        default_doc="6291456 (never more than the body limit; lowered to 1/128 of a cgroup "
        "memory limit, 64 KiB at least)",
    )
    # Whether SERVE_BODY_BUFFER_BYTES was set: serve fits only its own default to memory.
    body_buffer_chosen: bool = dataclasses.field(
        default=False,
        metadata={"derive": lambda env, values: env.text("SERVE_BODY_BUFFER_BYTES") is not None},
    )
    max_records: int = setting(
        "SERVE_MAX_RECORDS",
        MAX_RECORDS,
        _positive(MAX_THREADS),
        "records (CSV or JSON lines, rows of a `.npy` array, instances) one adapted request "
        "may hold; more get 413 naming it. Counted from what the body declares and carries "
        "before anything is allocated per record",
    )
    max_chunks: int = setting(
        "SERVE_MAX_CHUNKS",
        MAX_CHUNKS,
        _positive(MAX_THREADS),
        "Triton requests one adapted request may be split into (`max_batch_size` records "
        "each, one record each for a model that does not batch); more get 413 naming it. "
        "Each holds about 1 KB in the payload service until the answer is written",
    )
    nginx_workers: int | None = setting(
        "SERVE_NGINX_WORKERS",
        None,
        _positive(MAX_NGINX_WORKERS),
        "nginx worker processes of the public front",
        default_doc="the CPUs serve may use, up to 2 (chosen on two cores, where a second "
        "worker lets nginx run on whichever core Triton leaves free; docs/benchmarks.md)",
    )
    v2_json_writers: int | None = setting(
        "SERVE_V2_JSON_WRITERS",
        None,
        lambda env, name, _: env.whole_number(name, MAX_WRITERS),
        "processes that write the v2 JSON answers of models with large outputs (see "
        "`SERVE_V2_JSON_MIN_VALUES`), instead of Triton, which writes them on the model "
        "instance's thread while the next batch waits, and answer the text-generation "
        "models' chat, completion and TGI requests (`SERVE_TEXT_GENERATION_MODELS`) but a "
        "stateful session's; `0` leaves every v2 answer to Triton and the schemas to serve's "
        "own payload service. Single-model endpoints",
        default_doc="one per 4 CPUs (none below 4: there the CPU is the limit, and Triton's "
        "JSON costs less of it), and one per 256 MiB of a cgroup memory limit at most",
    )
    v2_json_writers_at: int = setting(
        "SERVE_V2_JSON_WRITERS_AT",
        32,
        lambda env, name, _: env.whole_number(name, MAX_CONNECTIONS),
        "requests in progress at the front at once (every route, the new one included) "
        "from which the v2 JSON answers of a model with writers (`SERVE_V2_JSON_WRITERS`) "
        "are written by the writers; with fewer, Triton writes them. Below it the model's "
        "instances have time to spare and the writers' hop costs more than Triton's JSON; "
        "from it on, writing the JSON off the instances' threads wins. `0` sends all to "
        "the writers",
    )
    v2_json_min_values: int = setting(
        "SERVE_V2_JSON_MIN_VALUES",
        256,
        _positive(MAX_THREADS),
        "serve writes a model's v2 JSON answers when one request's outputs hold this many "
        "numbers (from its config; a variable dimension counts as 1), or any output is FP16 "
        "or BF16 (which Triton cannot write as JSON)",
    )
    omp_num_threads: str | None = setting(
        "OMP_NUM_THREADS",
        None,
        _text,
        "OpenMP (PyTorch, BLAS) threads of Triton and each model process; a value you set "
        "is passed on as it is. Unset: CPUs / Python-backend instances when there are "
        "several, CPUs being the affinity mask lowered to a cgroup CPU quota (`docker run "
        "--cpus`, an inference component's share), rounded up",
        default_doc="CPUs / Python-backend instances when there are several",
    )
    visible_devices: str | None = setting(
        "CUDA_VISIBLE_DEVICES",
        None,
        # Set but empty hides every GPU, as CUDA reads it.
        _set_text,
        "read, not set: the GPUs Triton sees, so defaults sized by GPUs (instances per GPU, "
        "`--model-load-gpu-limit` per device, the move of `KIND_GPU` models to the CPU when "
        "none) count only those",
        default_doc="unset (every GPU the driver exposes)",
    )
    workdir: Path | None = setting(
        "SERVE_WORKDIR",
        None,
        _workdir,
        "where the prepared repository and the front's files live; run as root, every "
        "folder above it must let others enter (o+x), since nginx's workers run as nobody",
        default_doc="a temporary folder",
    )
    startup_timeout: float = setting(
        "SERVE_STARTUP_TIMEOUT",
        1800.0,
        _seconds,
        "seconds Triton may take to load models before `serve` gives up",
    )
    model_load_timeout: float = setting(
        "SERVE_MODEL_LOAD_TIMEOUT",
        3600.0,
        _seconds,
        "seconds one multi-model load (preparation and Triton's load) may take before it "
        "fails with 504 and is undone; the longest start-up SageMaker allows a container",
    )
    triton_restarts: int = setting(
        "SERVE_TRITON_RESTARTS",
        3,
        lambda env, name, _: env.whole_number(name, 100),
        "on a multi-model endpoint, how many times in 10 minutes `serve` starts Triton "
        "again after it crashed, and loads again the models it held (`/ping` answers 200 "
        "meanwhile); one crash more stops `serve`, as on a single-model endpoint, where "
        "Triton's crash always does. `0`: stop at the first",
    )
    shutdown_timeout: float = setting(
        "SERVE_SHUTDOWN_TIMEOUT",
        25.0,
        _seconds,
        "seconds from SIGTERM to exit (SageMaker kills after 30)",
    )
    env_cache: Path = setting(
        "SERVE_ENV_CACHE",
        Path(tempfile.gettempdir()) / "serve-env-cache",
        _env_cache,
        "where `EXECUTION_ENV_PATH` archives are unpacked, once per archive (by sha256); "
        "outside the run's workspace, so a later start reuses it. serve trusts what it "
        "holds, so it must be a folder of serve's own user that no one else can write or "
        "rename (start-up stops otherwise)",
        default_doc="`$TMPDIR/serve-env-cache`",
    )
    max_archive_bytes: int = setting(
        "SERVE_MAX_ARCHIVE_BYTES",
        MAX_ARCHIVE_BYTES,
        _positive(),
        "the most one model or environment archive may unpack to (larger: an archive bomb)",
        default_doc=f"{MAX_ARCHIVE_BYTES} (50 GiB)",
    )
    max_archive_members: int = setting(
        "SERVE_MAX_ARCHIVE_MEMBERS",
        MAX_ARCHIVE_MEMBERS,
        _positive(),
        "the most entries one archive may hold",
    )
    env_cache_min_free_bytes: int = setting(
        "SERVE_ENV_CACHE_MIN_FREE_BYTES",
        2 * 1024 * MEBIBYTE,
        _positive(),
        "multi-model endpoints: before each load, environments no loaded model uses are "
        "evicted (least recently used first) until the cache's disk has this much free",
        default_doc=f"{2 * 1024 * MEBIBYTE} (2 GiB)",
    )
    session_ttl: float = setting(
        "SERVE_SESSION_TTL_SECONDS",
        1200.0,
        _seconds,
        "how long a stateful session (SageMaker's `SessionId`) lasts from its opening, the "
        "time its `Expires` announces; then its sequence is ended in Triton and the model "
        "lets go of its state (1200 s is the default of AWS's own session manager)",
    )
    session_first_use: float = setting(
        "SERVE_SESSION_FIRST_USE_SECONDS",
        60.0,
        _seconds,
        'a session opened with `{"requestType": "NEW_SESSION"}` that no request has '
        "used this many seconds later is closed and its slot freed: opening one costs a "
        "caller nothing, so an unused one must cost the endpoint little (README: Stateful "
        "sessions)",
    )
    max_sessions: int = setting(
        "SERVE_MAX_SESSIONS",
        10000,
        _positive(MAX_THREADS),
        "open sessions at most, for every caller together; more get 429 until some close, "
        "expire or go unused past `SERVE_SESSION_FIRST_USE_SECONDS`",
    )
    text_generation_models: tuple[str, ...] = setting(
        "SERVE_TEXT_GENERATION_MODELS",
        (),
        _names,
        "comma-separated models that `/invocations` also serves in language-model clients' "
        "schemas: OpenAI's chat completions (`messages`) and completions (`prompt`), Hugging "
        "Face TGI's (`inputs` as text), streamed and not ([language models](language-models.md)). "
        "Their KServe v2 requests keep their meaning; their other JSON bodies are read in "
        'those schemas (`{"inputs": "text"}` is TGI\'s there). Single-model endpoints',
        default_doc="unset",
    )
    text_generation_inputs: str = setting(
        "SERVE_TEXT_GENERATION_INPUTS",
        "auto",
        _choice(*TEXT_GENERATION_INPUTS),
        "how those models' inputs are filled: `vllm` (the vLLM backend's `text_input`, "
        "`sampling_parameters`, ...), `tensorrt_llm` (TensorRT-LLM's ensemble: `text_input`, "
        "`max_tokens`, ...) or `auto`, the first whose inputs a model has",
    )
    chat_template: Path | None = setting(
        "SERVE_CHAT_TEMPLATE",
        None,
        _path,
        "a chat template for those models' chat requests: a Jinja file, or a "
        "`tokenizer_config.json` holding `chat_template`; relative paths are read in each "
        "model's folder",
        default_doc="the model folder's `tokenizer_config.json`",
    )
    text_generation_max_tokens: int = setting(
        "SERVE_TEXT_GENERATION_MAX_TOKENS",
        256,
        _positive(MAX_THREADS),
        "tokens a text-generation request makes when it names no limit (`max_tokens`, "
        "`max_completion_tokens`, `max_new_tokens`)",
    )
    bidirectional_streaming: bool = setting(
        "SERVE_BIDIRECTIONAL_STREAMING",
        True,
        _boolean,
        "the WebSocket route `/invocations-bidirectional-stream` "
        "(InvokeEndpointWithBidirectionalStream) on single-model endpoints; it talks to "
        "Triton's gRPC streaming API on loopback, which it turns on. `false` turns both off",
    )
    stream_send_timeout: float = setting(
        "SERVE_STREAM_SEND_TIMEOUT",
        30.0,
        _seconds,
        "seconds a bidirectional stream waits for its client to take the next output "
        "(backpressure) before it ends the stream (close code 1008)",
    )
    max_streams: int = setting(
        "SERVE_MAX_STREAMS",
        256,
        _positive(MAX_THREADS),
        "bidirectional streams open at once, for every caller together; one more is closed "
        "with code 1013 (try again later). Each holds a Triton sequence and up to about "
        "three times `SERVE_STREAM_BUFFER_BYTES` of memory",
    )
    stream_buffer_bytes: int = setting(
        "SERVE_STREAM_BUFFER_BYTES",
        MEBIBYTE,
        _positive(),
        "the largest message a bidirectional stream takes (a larger one closes the stream "
        "with code 1009), and the most its chunks on their way to Triton may hold before it "
        "stops reading and TCP pushes back on the client",
        default_doc=f"{MEBIBYTE} (1 MiB)",
    )
    stream_idle_seconds: float = setting(
        "SERVE_STREAM_IDLE_SECONDS",
        300.0,
        _seconds,
        "seconds a bidirectional stream may go without a message either way (pings do not "
        "count) before it is closed with code 1008 and its sequence ended in Triton",
    )

    @property
    def model_dir(self) -> Path:
        """Single-model artifacts (SageMaker unpacks ModelDataUrl here)."""
        return self.opt_ml / "model"

    @property
    def models_dir(self) -> Path:
        """Multi-model artifacts, one folder per loaded model."""
        return self.opt_ml / "models"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from an environment; `ConfigError` names any bad variable."""
        env = _Reader(environ)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            variable: Variable | None = field.metadata.get("variable")
            if variable is not None:
                value = variable.parse(env, variable.name, values)
                if value is OFF:
                    value = None
                elif value is None:
                    value = field.default
                values[field.name] = value
            else:
                values[field.name] = field.metadata["derive"](env, values)
        return cls(**values).validated()

    def public_ports(self) -> dict[str, int]:
        """Every port `serve` opens on the machine's network, by the variable that sets it."""
        ports = {"SAGEMAKER_BIND_TO_PORT": self.port}
        if self.allow_metrics:
            ports["SAGEMAKER_TRITON_METRICS_PORT"] = self.metrics_port
        if self.allow_grpc:
            ports["SAGEMAKER_TRITON_GRPC_PORT"] = self.grpc_port
        if self.serve_metrics_port is not None:
            ports["SERVE_METRICS_PORT"] = self.serve_metrics_port
        return ports

    def validated(self) -> Settings:
        """Check rules that span several variables."""
        if self.multi_model and self.text_generation_models:
            raise ConfigError(
                "SERVE_TEXT_GENERATION_MODELS names models of a single-model endpoint; a "
                "multi-model endpoint's models are named when they load: unset it, or "
                "serve the model on a single-model endpoint"
            )
        public = self.public_ports()
        for name, port in public.items():
            if name != "SERVE_METRICS_PORT" and port == self.serve_metrics_port:
                raise ConfigError(
                    f"SERVE_METRICS_PORT={port} is also {name}; give the front's "
                    "metrics a port of their own (or SERVE_METRICS_PORT=off)"
                )
        if self.safe_port_range is not None:
            for name, port in public.items():
                # SageMaker's own port is the one listener the range does not cover.
                if name != "SAGEMAKER_BIND_TO_PORT" and port not in self.safe_port_range:
                    raise ConfigError(
                        f"{name}={port} is outside SAGEMAKER_SAFE_PORT_RANGE="
                        f"{self.safe_port_range}; pick a port inside that range"
                    )
        return self


def variables() -> tuple[Variable, ...]:
    """Every variable `serve` reads, in declaration order."""
    found = (field.metadata.get("variable") for field in dataclasses.fields(Settings))
    return tuple(variable for variable in found if variable is not None)


# The prefixes whose every variable is serve's (or NVIDIA's script's, which serve keeps):
# one of them that serve does not read is a mistake worth a warning.
OWN_PREFIXES = ("SERVE_", "SAGEMAKER_TRITON_")


def unread_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """By name, a line for each variable of serve's prefixes that no setting reads (a
    misspelt name would otherwise leave the default in place without a word), with the
    nearest names serve does read."""
    known = {name for variable in variables() for name in variable.names}
    lines = {}
    for name in sorted(environ):
        if name.startswith(OWN_PREFIXES) and name not in known:
            near = difflib.get_close_matches(name, known, n=2, cutoff=0.75)
            hint = f"; did you mean {' or '.join(near)}?" if near else ""
            lines[name] = (
                f"{name} is set but serve reads no such variable, so it changes nothing"
                f"{hint} (docs/configuration.md lists them all)"
            )
    return lines


def markdown_tables() -> str:
    """docs/configuration.md's tables, one per `Table`."""
    parts = []
    for table, title in TABLE_TITLES.items():
        rows = [variable.row() for variable in variables() if variable.table == table]
        parts.append(
            "\n".join([f"{title}:", "", "| variable | default | meaning |", "|---|---|---|", *rows])
        )
    return "\n\n".join(parts) + "\n"


class _Reader:
    """Typed access to an environment; every parse error names the variable."""

    def __init__(self, environ: Mapping[str, str]):
        self._environ = environ

    def set_text(self, name: str) -> str | None:
        """The stripped value, "" when set but empty, None when unset."""
        value = self._environ.get(name)
        return None if value is None else value.strip()

    def text(self, name: str) -> str | None:
        """The stripped value; set but empty reads as unset."""
        return self.set_text(name) or None

    def set_names(self, declared: tuple[Variable, ...]) -> frozenset[str]:
        """The names (aliases too) of `declared` that hold a value here."""
        names = (name for variable in declared for name in variable.names)
        return frozenset(name for name in names if self.text(name) is not None)

    def path(self, name: str) -> Path | None:
        value = self.text(name)
        return Path(value) if value else None

    def boolean(self, name: str) -> bool | None:
        value = self.text(name)
        if value is None:
            return None
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise ConfigError(f"{name}={value!r} is not a boolean; use true or false")

    def choice(self, name: str, allowed: tuple[str, ...]) -> str | None:
        value = self.text(name)
        if value is None:
            return None
        if value not in allowed:
            raise ConfigError(f"{name}={value!r} is not one of: {', '.join(allowed)}")
        return value

    def positive_int(self, name: str, maximum: int | None = MAX_BYTES) -> int | None:
        """A whole number from 1 to `maximum` (None: any, for callers that check their own)."""
        value = self.text(name)
        if value is None:
            return None
        if not value.isdigit() or int(value) <= 0:
            raise ConfigError(f"{name}={value!r} must be a positive whole number")
        if maximum is not None and int(value) > maximum:
            raise ConfigError(f"{name}={value!r} is over {maximum}, the most this setting can be")
        return int(value)

    def whole_number(self, name: str, maximum: int) -> int | None:
        """A whole number from 0 to `maximum`."""
        value = self.text(name)
        if value is None:
            return None
        if not value.isdigit():
            raise ConfigError(f"{name}={value!r} must be a whole number (0 or more)")
        if int(value) > maximum:
            raise ConfigError(f"{name}={value!r} is over {maximum}, the most this setting can be")
        return int(value)

    def positive_float(self, name: str, maximum: float = MAX_SECONDS) -> float | None:
        value = self.text(name)
        if value is None:
            return None
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not number > 0:
            raise ConfigError(f"{name}={value!r} must be a positive number of seconds")
        if not number <= maximum:
            raise ConfigError(
                f"{name}={value!r} is over {maximum:.0f} seconds, the most this setting can be"
            )
        return number

    def port(self, name: str) -> int | None:
        value = self.positive_int(name, maximum=None)
        if value is None:
            return None
        if value > 65535:
            raise ConfigError(f"{name}={value} is not a TCP port (1-65535)")
        return value

    def port_range(self, name: str) -> PortRange | None:
        value = self.text(name)
        if value is None:
            return None
        low, _, high = value.partition("-")
        if not (low.isdigit() and high.isdigit()) or not 0 < int(low) <= int(high) <= 65535:
            raise ConfigError(f"{name}={value!r} must be LOW-HIGH, two ports with LOW <= HIGH")
        return PortRange(int(low), int(high))

    def shell_words(self, name: str) -> tuple[str, ...]:
        value = self.text(name)
        if value is None:
            return ()
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            raise ConfigError(f"{name} cannot be split into arguments: {exc}") from exc


if __name__ == "__main__":
    sys.stdout.write(markdown_tables())
