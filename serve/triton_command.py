"""The tritonserver command line, rendered from settings in one place.

Each SAGEMAKER_TRITON_* variable maps to the flag NVIDIA's serve script gives
it. The one deliberate difference: Triton's own SageMaker frontend always
binds 0.0.0.0, so it stays off, and SageMaker traffic reaches Triton's HTTP
frontend on loopback through the front (nginx); THREAD_COUNT therefore sizes
that frontend.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from serve.settings import Settings

LOOPBACK = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"


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
            f"--allow-grpc={_flag(s.allow_grpc)}",
            f"--allow-metrics={_flag(s.allow_metrics)}",
            f"--log-verbose={s.log_verbose}",
            f"--backend-config=python,shm-default-byte-size={self.shm_default_byte_size}",
            f"--backend-config=python,shm-growth-byte-size={s.shm_growth_byte_size}",
            # Triton must finish in-flight requests before SageMaker's SIGKILL.
            f"--exit-timeout-secs={max(1, int(s.shutdown_timeout) - 5)}",
        ]
        if s.allow_grpc:
            args += [f"--grpc-address={ALL_INTERFACES}", f"--grpc-port={s.grpc_port}"]
        if s.allow_metrics:
            args += [f"--metrics-address={ALL_INTERFACES}", f"--metrics-port={s.metrics_port}"]
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
