"""The tritonserver command line, rendered from settings in one place.

Each SAGEMAKER_TRITON_* variable maps to the flag NVIDIA's serve script gives
it. The one deliberate difference: Triton's own SageMaker frontend always
binds 0.0.0.0, so it stays off, and SageMaker traffic reaches Triton's HTTP
frontend on loopback through the front (nginx); THREAD_COUNT therefore sizes
that frontend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from serve.errors import ConfigError

if TYPE_CHECKING:  # settings.py checks SAGEMAKER_TRITON_ADDITIONAL_ARGS with this module
    from serve.settings import Settings

LOOPBACK = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"

_BEHIND_NGINX = (
    "Triton's HTTP frontend stays on 127.0.0.1 behind nginx, which answers SageMaker's "
    "routes on SAGEMAKER_BIND_TO_PORT"
)
_SAGEMAKER_FRONTEND = (
    "Triton's own SageMaker frontend listens on every address, past nginx (and aborts on "
    "a malformed POST /models); serve answers SageMaker's routes on SAGEMAKER_BIND_TO_PORT"
)
_GRPC = "use SAGEMAKER_TRITON_ALLOW_GRPC and SAGEMAKER_TRITON_GRPC_PORT instead"
_METRICS = "use SAGEMAKER_TRITON_ALLOW_METRICS and SAGEMAKER_TRITON_METRICS_PORT instead"
_REPOSITORY = "serve prepares the repository from $OPT_ML/model (or /models loads) instead"
_LOADING = (
    "serve loads every model at start, or each on POST /models on a multi-model endpoint, instead"
)
# Flags SAGEMAKER_TRITON_ADDITIONAL_ARGS may not carry, each with what to do instead:
# those that decide what listens where, and those serve sets itself.
RESERVED_FLAGS: dict[str, str] = {
    "--allow-http": f"{_BEHIND_NGINX}; nothing to set instead",
    "--http-address": f"{_BEHIND_NGINX}; set SAGEMAKER_BIND_TO_PORT instead",
    "--http-port": f"{_BEHIND_NGINX}; set SAGEMAKER_BIND_TO_PORT instead",
    "--reuse-http-port": f"{_BEHIND_NGINX}; one server per port, nothing to set instead",
    "--allow-grpc": _GRPC,
    "--grpc-address": f"gRPC listens on every address when on; {_GRPC}",
    "--grpc-port": _GRPC,
    "--reuse-grpc-port": f"one server per port; {_GRPC}",
    "--allow-metrics": _METRICS,
    "--metrics-address": f"metrics listen on every address when on; {_METRICS}",
    "--metrics-port": _METRICS,
    "--allow-sagemaker": f"{_SAGEMAKER_FRONTEND}; use serve's routes instead",
    "--sagemaker-port": f"{_SAGEMAKER_FRONTEND}; use serve's routes instead",
    "--sagemaker-safe-port-range": "set SAGEMAKER_SAFE_PORT_RANGE instead",
    "--allow-vertex-ai": "Vertex AI's frontend is not SageMaker's; use serve's routes instead",
    "--vertex-ai-port": "Vertex AI's frontend is not SageMaker's; use serve's routes instead",
    "--model-repository": _REPOSITORY,
    "--model-store": _REPOSITORY,
    "--model-control-mode": _LOADING,
    "--load-model": _LOADING,
    "--backend-directory": "set SERVE_EXTRA_BACKENDS to add backends instead",
}


# Releases after 2.51 refuse HTTP bodies over this flag's value (64 MiB by default).
MAX_INPUT_FLAG = "--http-max-input-size"
# What Triton is allowed per body of the front's limit (SERVE_MAX_BODY_BYTES): native
# bodies reach it as sent, but an adapted request's binary tensors can outweigh the
# text they came from ("1," in a CSV becomes 8 bytes of INT64).
ADAPTED_REQUEST_GROWTH = 4


def check_additional_args(args: Sequence[str]) -> tuple[str, ...]:
    """`args` (SAGEMAKER_TRITON_ADDITIONAL_ARGS), unless one names a flag of RESERVED_FLAGS.

    Triton reads its command line with getopt_long, which takes any unambiguous
    abbreviation of a flag (`--http-addr`): an argument that begins a reserved
    flag's name is refused too. No unreserved flag of Triton 2.51 begins a
    reserved one's name, so this refuses nothing Triton would read as one.
    """
    for arg in args:
        name = arg.split("=", 1)[0]
        if not name.startswith("--") or name == "--":
            continue
        for flag, instead in RESERVED_FLAGS.items():
            if flag.startswith(name):
                raise ConfigError(
                    f"SAGEMAKER_TRITON_ADDITIONAL_ARGS: {arg!r} sets {flag}, which serve keeps "
                    f"to itself: {instead}"
                )
    return tuple(args)


@dataclasses.dataclass(frozen=True)
class TritonCommand:
    binary: Path
    repository: Path
    backends_dir: Path
    http_port: int
    # Model names to load at start; ("*",) loads every model in the repository.
    load_models: tuple[str, ...]
    settings: Settings
    shm_default_byte_size: int
    gpu_count: int
    # Triton's metrics, on loopback only: the front serves them, relabelled, on GET
    # /metrics and on SAGEMAKER_TRITON_METRICS_PORT (serve/triton/metrics.py). None: off.
    loopback_metrics_port: int | None = None
    # Whether this release has MAX_INPUT_FLAG (its --help lists it).
    limits_input_size: bool = False
    # Triton's gRPC endpoint on loopback, for the bidirectional streams
    # (serve/sessions/bidirectional.py), when SAGEMAKER_TRITON_ALLOW_GRPC keeps it off.
    loopback_grpc_port: int | None = None

    def argv(self) -> list[str]:
        s = self.settings
        args = [
            str(self.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.backends_dir}",
            "--model-control-mode=explicit",
            *(f"--load-model={name}" for name in self.load_models),
            f"--model-namespacing={s.model_namespacing}",
            "--allow-sagemaker=false",
            "--allow-http=true",
            f"--http-address={LOOPBACK}",
            f"--http-port={self.http_port}",
            f"--allow-grpc={_flag(s.allow_grpc or self.loopback_grpc_port is not None)}",
            f"--allow-metrics={_flag(self.loopback_metrics_port is not None)}",
            f"--log-verbose={s.log_verbose}",
            f"--backend-config=python,shm-default-byte-size={self.shm_default_byte_size}",
            f"--backend-config=python,shm-growth-byte-size={s.shm_growth_byte_size}",
            # Triton must finish in-flight requests before SageMaker's SIGKILL.
            f"--exit-timeout-secs={max(1, int(s.shutdown_timeout) - 5)}",
        ]
        if s.allow_grpc:
            args += [f"--grpc-address={ALL_INTERFACES}", f"--grpc-port={s.grpc_port}"]
        elif self.loopback_grpc_port is not None:
            args += [f"--grpc-address={LOOPBACK}", f"--grpc-port={self.loopback_grpc_port}"]
        if self.loopback_metrics_port is not None:
            port = self.loopback_metrics_port
            args += [f"--metrics-address={LOOPBACK}", f"--metrics-port={port}"]
        if self.limits_input_size:
            args.append(f"{MAX_INPUT_FLAG}={s.max_body_bytes * ADAPTED_REQUEST_GROWTH}")
        optional = {
            "--log-info": s.log_info,
            "--log-warning": s.log_warning,
            "--log-error": s.log_error,
            "--http-thread-count": s.thread_count,
            "--buffer-manager-thread-count": s.buffer_manager_thread_count,
        }
        args += [f"{flag}={value}" for flag, value in optional.items() if value is not None]
        if s.tensorflow_version:
            args.append(f"--backend-config=tensorflow,version={s.tensorflow_version}")
        if s.model_load_gpu_limit:
            args += [
                f"--model-load-gpu-limit={gpu}:{s.model_load_gpu_limit}"
                for gpu in range(self.gpu_count)
            ]
        return [*args, *s.additional_args]


def _flag(value: bool) -> str:
    return "true" if value else "false"
