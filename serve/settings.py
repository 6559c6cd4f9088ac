"""Every environment variable `serve` honours, read once at start-up.

SageMaker configures a container only through its environment, so this module
is the one place that knows each variable by name. `Settings.from_environ`
validates everything up front: a bad value stops `serve` before any process
starts, with a message naming the variable and what it accepts.

The `SAGEMAKER_TRITON_*` variables keep the meaning and defaults of NVIDIA's
`docker/sagemaker/serve` script, so an endpoint configured for the official
image behaves the same here.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from serve.archives import ExtractionLimits
from serve.errors import ConfigError
from serve.triton_command import check_additional_args

PingMode = Literal["ready", "live"]
InferenceType = Literal["infer", "generate", "generate_stream"]
BatchStrategy = Literal["SINGLE_RECORD", "MULTI_RECORD"]

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
# What SERVE_METRICS_PATH may be: nginx matches it exactly, so no pattern characters.
METRICS_PATH = re.compile(r"^/[A-Za-z0-9._~/-]*$")
# Paths the public port answers otherwise (the front's own internal ones included).
PUBLIC_ROUTES = frozenset({"", "/ping", "/invocations", "/models"})
PUBLIC_ROUTE_PREFIXES = ("/models/", "/_serve/")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclasses.dataclass(frozen=True)
class PortRange:
    """`SAGEMAKER_SAFE_PORT_RANGE`: where every listener but the public one must be."""

    low: int
    high: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"


@dataclasses.dataclass(frozen=True)
class Settings:
    """The container's configuration; field comments name the variable behind each."""

    # OPT_ML: root of SageMaker's paths (/opt/ml); tests and local runs move it.
    opt_ml: Path = Path("/opt/ml")
    # SAGEMAKER_MULTI_MODEL=true: serve a multi-model endpoint from opt_ml/models.
    multi_model: bool = False
    # SAGEMAKER_BATCH=true: a batch transform job runs this container (SageMaker sets it).
    batch: bool = False
    # SAGEMAKER_BATCH_STRATEGY (SINGLE_RECORD | MULTI_RECORD), SAGEMAKER_MAX_CONCURRENT_TRANSFORMS
    # and SAGEMAKER_MAX_PAYLOAD_IN_MB: what a transform job set itself (SageMaker passes each
    # only when the job names it); GET /execution-parameters answers them as they are
    # (serve/batch_transform.py). The body limit follows the payload limit unless
    # SERVE_MAX_BODY_BYTES is set (`_max_body`); 0 (SageMaker's "chunked bodies of
    # any size") leaves it at batch transform's 100 MB.
    batch_strategy: BatchStrategy | None = None
    max_concurrent_transforms: int | None = None
    max_payload_mb: int | None = None
    # SAGEMAKER_BIND_TO_PORT: the public port (inference pipelines move it).
    port: int = 8080
    # SAGEMAKER_SAFE_PORT_RANGE: "LOW-HIGH" for every other listener.
    safe_port_range: PortRange | None = None
    # SAGEMAKER_TRITON_DEFAULT_MODEL_NAME: the model /invocations runs.
    default_model_name: str | None = None
    # SAGEMAKER_TRITON_OVERRIDE_PING_MODE (alias SAGEMAKER_TRITON_PING_MODE):
    # "ready" (the default model is ready) or "live" (the server is up).
    # Defaults to ready for single-model and live for multi-model endpoints.
    ping_mode: PingMode = "ready"
    # SAGEMAKER_TRITON_INFERENCE_TYPE: which Triton API /invocations calls.
    inference_type: InferenceType = "infer"
    # SAGEMAKER_TRITON_ALLOW_GRPC / _GRPC_PORT: Triton's gRPC endpoint, public when on.
    allow_grpc: bool = False
    grpc_port: int = 8001
    # SAGEMAKER_TRITON_ALLOW_METRICS / _METRICS_PORT: Prometheus metrics, public when on.
    allow_metrics: bool = False
    metrics_port: int = 8002
    # SERVE_METRICS_PORT: the front's own Prometheus metrics (requests, status codes,
    # latency, model loads, environment cache; serve/metrics.py), public when on. Unset:
    # on at SAGEMAKER_TRITON_METRICS_PORT + 1 when Triton's metrics are on, else off.
    # A port turns them on (alone too); "off" turns them off. None: off.
    serve_metrics_port: int | None = None
    # SERVE_METRICS_PATH: where the public port answers GET with Prometheus text holding
    # Triton's metrics and the front's (serve/metrics.py): SageMaker's detailed
    # observability scrapes /metrics on port 8080 unless ContainerMetricsConfig names
    # another path. "off" turns it off. None: off.
    metrics_path: str | None = "/metrics"
    # SAGEMAKER_TRITON_LOG_VERBOSE / _LOG_INFO / _LOG_WARNING / _LOG_ERROR,
    # passed to Triton as given (verbose logging is on by default, as in NVIDIA's image).
    log_verbose: str = "true"
    log_info: str | None = None
    log_warning: str | None = None
    log_error: str | None = None
    # SAGEMAKER_TRITON_THREAD_COUNT: threads of the HTTP frontend that serves
    # /invocations (Triton's --http-thread-count here; --sagemaker-thread-count there).
    thread_count: int | None = None
    # SAGEMAKER_TRITON_BUFFER_MANAGER_THREAD_COUNT: Triton's --buffer-manager-thread-count.
    buffer_manager_thread_count: int | None = None
    # OMP_NUM_THREADS: OpenMP threads (PyTorch's intra-op pool, BLAS) in Triton and
    # each Python-backend model instance, passed on as given. Unset: serve sets it to
    # CPUs / Python-backend instances when there are several (serve/host.py).
    omp_num_threads: str | None = None
    # SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE / _SHM_GROWTH_BYTE_SIZE: the Python
    # backend's shared-memory region per model instance, and its growth step.
    shm_default_byte_size: int = 16 * MEBIBYTE
    shm_growth_byte_size: int = MEBIBYTE
    # SAGEMAKER_TRITON_MODEL_LOAD_GPU_LIMIT: fraction of each GPU's memory loads may use.
    model_load_gpu_limit: str | None = None
    # SAGEMAKER_TRITON_TENSORFLOW_VERSION: the TensorFlow backend's version.
    tensorflow_version: str | None = None
    # SAGEMAKER_TRITON_DISABLE_MODEL_NAMESPACING: passed to --model-namespacing
    # as given, exactly as NVIDIA's script does (so "false" turns namespacing off).
    model_namespacing: str = "true"
    # SAGEMAKER_TRITON_ADDITIONAL_ARGS: extra tritonserver flags, shell-quoted; those
    # that decide what listens where, or that serve sets itself, are refused
    # (serve/triton_command.py's RESERVED_FLAGS).
    additional_args: tuple[str, ...] = ()
    # TRITONSERVER_BIN: the server binary, when not in a standard place.
    triton_bin: Path | None = None
    # SERVE_MODEL_PYTHON: the interpreter whose packages Python-backend models
    # import; it goes first on Triton's PATH, where the stub finds its prefix.
    # Unset: the one running serve (locally, the virtual environment's). The
    # image sets the base image's /usr/bin/python3: serve's own venv stays apart.
    model_python: Path | None = None
    # SERVE_EXTRA_BACKENDS: colon-separated folders of extra Triton backends
    # (one subfolder each), added beside the installation's own.
    extra_backends: tuple[Path, ...] = ()
    # SERVE_MAX_BODY_BYTES: largest request body. Unset: SageMaker's cap for the kind of
    # endpoint (`_max_body`): 6 MB for real-time InvokeEndpoint; batch transform
    # (SAGEMAKER_BATCH, SAGEMAKER_MAX_PAYLOAD_IN_MB, which SageMaker sets) up to 100 MB;
    # asynchronous inference 1 GB, which SageMaker does not announce to the container
    # (SERVE_ASYNC_INFERENCE=true says so). Larger bodies get 413.
    max_body_bytes: int = REALTIME_MAX_BODY_BYTES
    # The variable that decided max_body_bytes, named in the 413's message.
    max_body_set_by: str = "SERVE_MAX_BODY_BYTES"
    # SERVE_BODY_BUFFER_BYTES: bodies up to this size stay in memory (nginx and the
    # payload service); larger ones are written to the workspace's disk as they arrive.
    # The default keeps every real-time body in memory, as on the hot path before.
    body_buffer_bytes: int = REALTIME_MAX_BODY_BYTES
    # SAGEMAKER_MODEL_SERVER_TIMEOUT (the name AWS's inference toolkit reads): seconds an
    # invocation may take, in every layer (nginx, the payload service, its Triton client).
    # The default covers the longest wait SageMaker allows: asynchronous inference
    # (InvocationTimeoutSeconds) and batch transform (InvocationsTimeoutInSeconds), both
    # up to 3600 s; real-time endpoints give up after 60 s on their own.
    invocation_timeout: float = 3600.0
    # SERVE_WORKDIR: where the prepared repository and the front's files live.
    workdir: Path | None = None
    # SERVE_STARTUP_TIMEOUT: seconds Triton may take to load the models.
    startup_timeout: float = 1800.0
    # SERVE_MODEL_LOAD_TIMEOUT: seconds one multi-model load (preparation and Triton's
    # load) may take before it fails with 504; Triton then gets as long again to let go
    # of the model. The default is the longest start-up SageMaker allows a container
    # (ContainerStartupHealthCheckTimeoutInSeconds, ModelDataDownloadTimeoutInSeconds:
    # 3600 s at most); SageMaker documents no limit of its own for a multi-model load.
    model_load_timeout: float = 3600.0
    # SERVE_SHUTDOWN_TIMEOUT: seconds between SIGTERM and exit; SageMaker
    # sends SIGKILL 30 s after SIGTERM.
    shutdown_timeout: float = 25.0
    # SERVE_ENV_CACHE: where EXECUTION_ENV_PATH archives are unpacked, once per
    # archive (keyed by sha256); outside the run's workspace, so a restart reuses it.
    env_cache: Path = Path("/tmp/serve-env-cache")
    # SERVE_MAX_ARCHIVE_BYTES / SERVE_MAX_ARCHIVE_MEMBERS: the most one model or
    # environment archive may unpack to; larger ones are refused as archive bombs.
    max_archive_bytes: int = ExtractionLimits.max_total_bytes
    max_archive_members: int = ExtractionLimits.max_members
    # SERVE_ENV_CACHE_MIN_FREE_BYTES: on a multi-model endpoint, before each
    # load, least-recently-used environments no loaded model uses are evicted
    # until the cache's disk has this much free.
    env_cache_min_free_bytes: int = 2 * 1024 * MEBIBYTE
    # SERVE_SESSION_TTL_SECONDS: how long a stateful session (SageMaker's SessionId,
    # serve/sessions/) lasts from its opening, the time its Expires announces; then its
    # sequence is ended in Triton and the model lets go of its state. 1200 s is the
    # default of AWS's own session manager for SageMaker containers.
    session_ttl: float = 1200.0
    # SERVE_MAX_SESSIONS: open sessions at most; more get 429 until some close or expire.
    max_sessions: int = 10000
    # SERVE_BIDIRECTIONAL_STREAMING: the WebSocket route /invocations-bidirectional-stream
    # (InvokeEndpointWithBidirectionalStream) on single-model endpoints; it talks to
    # Triton's gRPC streaming API on loopback, which it turns on. "false" turns both off.
    bidirectional_streaming: bool = True
    # SERVE_STREAM_SEND_TIMEOUT: seconds a bidirectional stream waits for its client to
    # take the next output (backpressure) before it ends the stream (close code 1008).
    stream_send_timeout: float = 30.0

    @property
    def extraction_limits(self) -> ExtractionLimits:
        return ExtractionLimits(self.max_archive_bytes, self.max_archive_members)

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
        multi_model = env.boolean("SAGEMAKER_MULTI_MODEL", False)
        ping_mode = env.choice(
            "SAGEMAKER_TRITON_OVERRIDE_PING_MODE",
            ("ready", "live"),
            env.choice("SAGEMAKER_TRITON_PING_MODE", ("ready", "live"), None),
        ) or ("live" if multi_model else "ready")
        return cls(
            opt_ml=Path(env.text("OPT_ML") or "/opt/ml"),
            multi_model=multi_model,
            batch=env.boolean("SAGEMAKER_BATCH", False),
            batch_strategy=env.choice(  # type: ignore[arg-type]
                "SAGEMAKER_BATCH_STRATEGY", ("SINGLE_RECORD", "MULTI_RECORD"), None
            ),
            max_concurrent_transforms=env.positive_int(
                "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", MAX_THREADS
            ),
            max_payload_mb=env.whole_number("SAGEMAKER_MAX_PAYLOAD_IN_MB", MAX_BYTES // MEBIBYTE),
            port=env.port("SAGEMAKER_BIND_TO_PORT", 8080),
            safe_port_range=env.port_range("SAGEMAKER_SAFE_PORT_RANGE"),
            default_model_name=env.text("SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"),
            ping_mode=ping_mode,  # type: ignore[arg-type]
            inference_type=env.choice(  # type: ignore[arg-type]
                "SAGEMAKER_TRITON_INFERENCE_TYPE", ("infer", "generate", "generate_stream"), "infer"
            ),
            allow_grpc=env.boolean("SAGEMAKER_TRITON_ALLOW_GRPC", False),
            grpc_port=env.port("SAGEMAKER_TRITON_GRPC_PORT", 8001),
            allow_metrics=env.boolean("SAGEMAKER_TRITON_ALLOW_METRICS", False),
            metrics_port=env.port("SAGEMAKER_TRITON_METRICS_PORT", 8002),
            serve_metrics_port=_serve_metrics_port(env),
            metrics_path=_metrics_path(env),
            log_verbose=env.text("SAGEMAKER_TRITON_LOG_VERBOSE") or "true",
            log_info=env.text("SAGEMAKER_TRITON_LOG_INFO"),
            log_warning=env.text("SAGEMAKER_TRITON_LOG_WARNING"),
            log_error=env.text("SAGEMAKER_TRITON_LOG_ERROR"),
            thread_count=env.positive_int("SAGEMAKER_TRITON_THREAD_COUNT", MAX_THREADS),
            buffer_manager_thread_count=env.positive_int(
                "SAGEMAKER_TRITON_BUFFER_MANAGER_THREAD_COUNT", MAX_THREADS
            ),
            omp_num_threads=env.text("OMP_NUM_THREADS"),
            shm_default_byte_size=env.positive_int("SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE")
            or 16 * MEBIBYTE,
            shm_growth_byte_size=env.positive_int("SAGEMAKER_TRITON_SHM_GROWTH_BYTE_SIZE")
            or MEBIBYTE,
            model_load_gpu_limit=env.text("SAGEMAKER_TRITON_MODEL_LOAD_GPU_LIMIT"),
            tensorflow_version=env.text("SAGEMAKER_TRITON_TENSORFLOW_VERSION"),
            model_namespacing=env.text("SAGEMAKER_TRITON_DISABLE_MODEL_NAMESPACING") or "true",
            additional_args=check_additional_args(
                env.shell_words("SAGEMAKER_TRITON_ADDITIONAL_ARGS")
            ),
            triton_bin=env.path("TRITONSERVER_BIN"),
            model_python=env.path("SERVE_MODEL_PYTHON"),
            extra_backends=tuple(
                Path(part) for part in (env.text("SERVE_EXTRA_BACKENDS") or "").split(":") if part
            ),
            **_max_body(env),
            invocation_timeout=env.positive_float("SAGEMAKER_MODEL_SERVER_TIMEOUT") or 3600.0,
            workdir=env.path("SERVE_WORKDIR"),
            startup_timeout=env.positive_float("SERVE_STARTUP_TIMEOUT") or 1800.0,
            model_load_timeout=env.positive_float("SERVE_MODEL_LOAD_TIMEOUT") or 3600.0,
            shutdown_timeout=env.positive_float("SERVE_SHUTDOWN_TIMEOUT") or 25.0,
            env_cache=env.path("SERVE_ENV_CACHE")
            or Path(tempfile.gettempdir()) / "serve-env-cache",
            max_archive_bytes=env.positive_int("SERVE_MAX_ARCHIVE_BYTES")
            or ExtractionLimits.max_total_bytes,
            max_archive_members=env.positive_int("SERVE_MAX_ARCHIVE_MEMBERS")
            or ExtractionLimits.max_members,
            env_cache_min_free_bytes=env.positive_int("SERVE_ENV_CACHE_MIN_FREE_BYTES")
            or 2 * 1024 * MEBIBYTE,
            session_ttl=env.positive_float("SERVE_SESSION_TTL_SECONDS") or 1200.0,
            max_sessions=env.positive_int("SERVE_MAX_SESSIONS", MAX_THREADS) or 10000,
            bidirectional_streaming=env.boolean("SERVE_BIDIRECTIONAL_STREAMING", True),
            stream_send_timeout=env.positive_float("SERVE_STREAM_SEND_TIMEOUT") or 30.0,
        ).validated()

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


class _Reader:
    """Typed access to an environment; every parse error names the variable."""

    def __init__(self, environ: Mapping[str, str]):
        self._environ = environ

    def text(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def path(self, name: str) -> Path | None:
        value = self.text(name)
        return Path(value) if value else None

    def boolean(self, name: str, default: bool) -> bool:
        value = self.text(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise ConfigError(f"{name}={value!r} is not a boolean; use true or false")

    def choice(self, name: str, allowed: tuple[str, ...], default: str | None) -> str | None:
        value = self.text(name)
        if value is None:
            return default
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

    def port(self, name: str, default: int) -> int:
        value = self.positive_int(name, maximum=None)
        if value is None:
            return default
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


def _max_body(env: _Reader) -> dict[str, object]:
    """max_body_bytes, the variable that set it, and body_buffer_bytes (never larger)."""
    explicit = env.positive_int("SERVE_MAX_BODY_BYTES")
    # 0 asks for bodies of any size in chunks (MaxPayloadInMB=0, for the algorithms that
    # take them); the batch cap below applies then.
    batch_mb = None
    if env.text("SAGEMAKER_MAX_PAYLOAD_IN_MB") != "0":
        batch_mb = env.positive_int("SAGEMAKER_MAX_PAYLOAD_IN_MB", MAX_BYTES // MEBIBYTE)
    if explicit is not None:
        limit, set_by = explicit, "SERVE_MAX_BODY_BYTES"
    elif batch_mb is not None:
        limit, set_by = batch_mb * MEBIBYTE, "SAGEMAKER_MAX_PAYLOAD_IN_MB"
    elif env.boolean("SAGEMAKER_BATCH", False):
        limit, set_by = BATCH_MAX_BODY_BYTES, "SAGEMAKER_BATCH"
    elif env.boolean("SERVE_ASYNC_INFERENCE", False):
        limit, set_by = ASYNC_MAX_BODY_BYTES, "SERVE_ASYNC_INFERENCE"
    else:
        limit, set_by = REALTIME_MAX_BODY_BYTES, "SERVE_MAX_BODY_BYTES"
    buffer = env.positive_int("SERVE_BODY_BUFFER_BYTES") or REALTIME_MAX_BODY_BYTES
    return {
        "max_body_bytes": limit,
        "max_body_set_by": set_by,
        "body_buffer_bytes": min(buffer, limit),
    }


def _metrics_path(env: _Reader) -> str | None:
    """SERVE_METRICS_PATH: a path of the public port, "off", or unset (/metrics)."""
    value = env.text("SERVE_METRICS_PATH")
    if value is None:
        return "/metrics"
    if value.lower() in _FALSE:
        return None
    if not METRICS_PATH.match(value):
        raise ConfigError(
            f"SERVE_METRICS_PATH={value!r} must be a path of letters, digits and . _ ~ - /, "
            "starting with / (such as /metrics), or off"
        )
    if value.rstrip("/") in PUBLIC_ROUTES or value.startswith(PUBLIC_ROUTE_PREFIXES):
        raise ConfigError(
            f"SERVE_METRICS_PATH={value!r} is a route the endpoint answers already; "
            "choose another path, such as /metrics"
        )
    return value


def _serve_metrics_port(env: _Reader) -> int | None:
    """SERVE_METRICS_PORT: a port, "off", or unset (next to Triton's when those are on)."""
    value = env.text("SERVE_METRICS_PORT")
    if value is not None and value.lower() in _FALSE:
        return None
    if value is not None:
        return env.port("SERVE_METRICS_PORT", 0)
    if not env.boolean("SAGEMAKER_TRITON_ALLOW_METRICS", False):
        return None
    port = env.port("SAGEMAKER_TRITON_METRICS_PORT", 8002) + 1
    if port > 65535:
        raise ConfigError(
            f"SAGEMAKER_TRITON_METRICS_PORT={port - 1} leaves no port after it for the "
            "front's metrics; set SERVE_METRICS_PORT (or SERVE_METRICS_PORT=off)"
        )
    return port
