"""The tritonserver command line, rendered from settings in one place.

Each SAGEMAKER_TRITON_* variable maps to the flag NVIDIA's serve script gives
it. The one deliberate difference: Triton's own SageMaker frontend always
binds 0.0.0.0, so it stays off, and SageMaker traffic reaches Triton's HTTP
frontend on loopback through the front (nginx); THREAD_COUNT therefore sizes
that frontend.

SAGEMAKER_TRITON_ADDITIONAL_ARGS reaches the same command line: FLAGS decides,
per flag, whether serve refuses it, merges it with the setting it renders the
flag from, or passes it on (and why).
"""

from __future__ import annotations

import dataclasses
import enum
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


class Decision(enum.Enum):
    """What serve does with a flag of SAGEMAKER_TRITON_ADDITIONAL_ARGS."""

    # Stops start-up naming the flag and what to do instead.
    REFUSE = "refuse"
    # Taken as the value of the setting serve renders the flag from (MERGED_SETTINGS).
    MERGE = "merge"
    # Passed on as given; the reason says why that keeps serve's guarantees.
    ALLOW = "allow"


@dataclasses.dataclass(frozen=True)
class FlagRule:
    decision: Decision
    reason: str


def _refuse(instead: str) -> FlagRule:
    return FlagRule(Decision.REFUSE, instead)


# Serve's one table of Triton's flags (checked against `tritonserver --help` by
# tests/test_settings.py): those that decide what listens where, those serve sets
# itself, and those that would undo what it guarantees, each with its decision. A
# flag the table does not name is passed on as given: none of them decides what
# listens where, what serve prepared, or what it relies on.
FLAGS: dict[str, FlagRule] = {
    "--allow-http": _refuse(f"{_BEHIND_NGINX}; nothing to set instead"),
    "--http-address": _refuse(f"{_BEHIND_NGINX}; set SAGEMAKER_BIND_TO_PORT instead"),
    "--http-port": _refuse(f"{_BEHIND_NGINX}; set SAGEMAKER_BIND_TO_PORT instead"),
    "--reuse-http-port": _refuse(f"{_BEHIND_NGINX}; one server per port, nothing to set instead"),
    "--allow-grpc": _refuse(_GRPC),
    "--grpc-address": _refuse(f"gRPC listens on every address when on; {_GRPC}"),
    "--grpc-port": _refuse(_GRPC),
    "--reuse-grpc-port": _refuse(f"one server per port; {_GRPC}"),
    "--allow-metrics": _refuse(_METRICS),
    "--metrics-address": _refuse(f"metrics listen on every address when on; {_METRICS}"),
    "--metrics-port": _refuse(_METRICS),
    "--allow-sagemaker": _refuse(f"{_SAGEMAKER_FRONTEND}; use serve's routes instead"),
    "--sagemaker-port": _refuse(f"{_SAGEMAKER_FRONTEND}; use serve's routes instead"),
    "--sagemaker-safe-port-range": _refuse("set SAGEMAKER_SAFE_PORT_RANGE instead"),
    "--allow-vertex-ai": _refuse(
        "Vertex AI's frontend is not SageMaker's; use serve's routes instead"
    ),
    "--vertex-ai-port": _refuse(
        "Vertex AI's frontend is not SageMaker's; use serve's routes instead"
    ),
    "--model-repository": _refuse(_REPOSITORY),
    "--model-store": _refuse(_REPOSITORY),
    "--model-control-mode": _refuse(_LOADING),
    "--load-model": _refuse(_LOADING),
    "--backend-directory": _refuse("set SERVE_EXTRA_BACKENDS to add backends instead"),
    "--model-config-name": _refuse(
        "Triton would read each model's configs/<name>.pbtxt instead of the config.pbtxt "
        "serve prepared (KIND_GPU moved to the CPU, EXECUTION_ENV_PATH unpacked and "
        "checked, an upload's names rewritten), so models would load unchecked; put the "
        "configuration to serve in config.pbtxt instead"
    ),
    "--repoagent-directory": _refuse(
        "repository agents are libraries loaded into Triton that change the repository "
        "after serve checked it, and a folder named at run time can be anywhere (a "
        "model's own among them); the image's agents (/opt/tritonserver/repoagents) still "
        "serve the models that name them: nothing to set instead"
    ),
    "--cache-directory": _refuse(
        "cache implementations are libraries loaded into Triton, and a folder named at "
        "run time can be anywhere (a model's own among them); the image's caches "
        "(/opt/tritonserver/caches) serve --cache-config, which stays allowed: nothing to "
        "set instead"
    ),
    "--http-header-forward-pattern": _refuse(
        "Triton would hand callers' headers to models as request parameters, but only on "
        "the requests nginx passes straight to it (not those serve adapts, nor sessions "
        "or streams), and SageMaker passes a caller's X-Amzn-SageMaker-Custom-Attributes "
        "and strips the rest: send what a model needs in the request body instead"
    ),
    "--http-restricted-api": _refuse(
        "serve's own calls to Triton's HTTP API (health, configuration, multi-model "
        "loads) carry no key, and that API listens on 127.0.0.1 only, behind nginx: "
        "nothing to set instead"
    ),
    "--exit-timeout-secs": _refuse(
        "serve sets it from SERVE_SHUTDOWN_TIMEOUT, so Triton finishes within SageMaker's "
        "30 s before SIGKILL; set SERVE_SHUTDOWN_TIMEOUT instead"
    ),
    "--model-namespacing": FlagRule(
        Decision.MERGE,
        "serve renders it from SAGEMAKER_TRITON_DISABLE_MODEL_NAMESPACING; a value here "
        "is taken as that setting (refused when both are set and differ)",
    ),
    "--backend-config": FlagRule(
        Decision.MERGE,
        "the Python backend's shm-default-byte-size and shm-growth-byte-size, and "
        "TensorFlow's version, are taken as their settings (serve fits the shm size to "
        "/dev/shm; refused when both are set and differ); its shm-region-prefix-name is "
        "refused (serve names the regions, to remove those a crashed Triton leaves); "
        "every other backend setting is passed on",
    ),
    "--cache-config": FlagRule(
        Decision.ALLOW,
        "the response cache, from the image's cache libraries: Triton caches an answer "
        "per model and exact request, and refuses the cache for sequence and decoupled "
        "models, so no session's or stream's state is shared",
    ),
    "--grpc-restricted-protocol": FlagRule(
        Decision.ALLOW,
        "keys for the public gRPC endpoint (SAGEMAKER_TRITON_ALLOW_GRPC); restricting "
        "'inference' there also stops bidirectional streams, whose loopback client sends "
        "none",
    ),
    "--grpc-header-forward-pattern": FlagRule(
        Decision.ALLOW,
        "forwards the metadata of calls to the public gRPC endpoint, which callers reach "
        "only when SAGEMAKER_TRITON_ALLOW_GRPC opens it; bidirectional streams send none",
    ),
    "--grpc-use-ssl": FlagRule(
        Decision.ALLOW,
        "TLS for the public gRPC endpoint; bidirectional streams then fail, since their "
        "loopback client speaks plain gRPC: set SERVE_BIDIRECTIONAL_STREAMING=false with it",
    ),
}
# The flags a SAGEMAKER_TRITON_ADDITIONAL_ARGS argument may not name.
RESERVED_FLAGS: dict[str, str] = {
    flag: rule.reason for flag, rule in FLAGS.items() if rule.decision is Decision.REFUSE
}
# The Python backend names its regions in /dev/shm this setting's value and a UUID
# (triton_python_backend_shm_region_UUID by default).
SHM_PREFIX_SETTING = "python,shm-region-prefix-name"
# What MERGE refuses: (flag, the setting's key in its value) -> why, and what to do.
REFUSED_SETTINGS: dict[tuple[str, str], str] = {
    ("--backend-config", SHM_PREFIX_SETTING): (
        "names the Python backend's shared-memory regions, which serve names itself (unique "
        "to each serve, so that the regions a crashed Triton leaves are removed); leave it out"
    ),
}
# What MERGE takes: (flag, the setting's key in its value) -> the Settings field, the
# variable that sets it, and how its value is read. For --backend-config the key is
# "backend,setting"; for a flag of one value, the flag itself.
MERGED_SETTINGS: dict[tuple[str, str], tuple[str, str]] = {
    ("--backend-config", "python,shm-default-byte-size"): (
        "shm_default_byte_size",
        "SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE",
    ),
    ("--backend-config", "python,shm-growth-byte-size"): (
        "shm_growth_byte_size",
        "SAGEMAKER_TRITON_SHM_GROWTH_BYTE_SIZE",
    ),
    ("--backend-config", "tensorflow,version"): (
        "tensorflow_version",
        "SAGEMAKER_TRITON_TENSORFLOW_VERSION",
    ),
    ("--model-namespacing", "--model-namespacing"): (
        "model_namespacing",
        "SAGEMAKER_TRITON_DISABLE_MODEL_NAMESPACING",
    ),
}

# Releases after 2.51 refuse HTTP bodies over this flag's value (64 MiB by default).
MAX_INPUT_FLAG = "--http-max-input-size"
# What Triton is allowed per body of the front's limit (SERVE_MAX_BODY_BYTES): native
# bodies reach it as sent, but an adapted request's binary tensors can outweigh the
# text they came from ("1," in a CSV becomes 8 bytes of INT64).
ADAPTED_REQUEST_GROWTH = 4


def check_additional_args(args: Sequence[str]) -> tuple[str, ...]:
    """`args` (SAGEMAKER_TRITON_ADDITIONAL_ARGS), unless one names a flag serve refuses.

    Triton reads its command line with getopt_long, which takes any unambiguous
    abbreviation of a flag (`--http-addr`): an argument that begins a refused
    flag's name is refused too. No other flag of Triton 2.51 begins a refused
    one's name, so this refuses nothing Triton would read as another flag.
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


def merge_additional_args(settings: Settings) -> Settings:
    """`settings` with SAGEMAKER_TRITON_ADDITIONAL_ARGS checked and its MERGE flags taken in.

    A merged value becomes its setting's (serve renders the flag from it, fitted
    where it fits one) and leaves the arguments passed on; an argument naming a
    merged setting whose variable is set to another value stops start-up, since
    one of the two would silently lose.
    """
    args = list(check_additional_args(settings.additional_args))
    kept: list[str] = []
    merged: dict[str, Any] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        name, has_value, value = arg.partition("=")
        flag = _merge_flag(name)
        taken = 1
        if flag is not None and not has_value and index + 1 < len(args):
            value, taken = args[index + 1], 2
        target = _merge_target(flag, value, arg) if flag is not None else None
        if target is None:
            kept.append(arg)
            index += 1
            continue
        field, variable, raw = target
        parsed = _merged_value(field, variable, raw, arg)
        if variable in settings.set_variables and getattr(settings, field) != parsed:
            raise ConfigError(
                f"SAGEMAKER_TRITON_ADDITIONAL_ARGS: {arg!r} sets {variable} to {raw!r}, "
                f"which is set to {getattr(settings, field)!r} already; keep one of them"
            )
        merged[field] = parsed
        index += taken
    return dataclasses.replace(settings, additional_args=tuple(kept), **merged)


def _merge_flag(name: str) -> str | None:
    """The MERGE flag an argument names (getopt_long takes abbreviations), or None."""
    if not name.startswith("--") or name == "--":
        return None
    named = [flag for flag in FLAGS if flag.startswith(name)]
    if len(named) == 1 and FLAGS[named[0]].decision is Decision.MERGE:
        return named[0]
    return None


def _merge_target(flag: str, value: str, arg: str) -> tuple[str, str, str] | None:
    """(Settings field, variable, raw value) that `flag` with `value` (argument `arg`) sets;
    None: passed on. A key REFUSED_SETTINGS names stops start-up."""
    if flag == "--backend-config":
        key, _, raw = value.partition("=")
    else:
        key, raw = flag, value
    setting = (flag, key.strip())
    if setting in REFUSED_SETTINGS:
        raise ConfigError(f"SAGEMAKER_TRITON_ADDITIONAL_ARGS: {arg!r} {REFUSED_SETTINGS[setting]}")
    found = MERGED_SETTINGS.get(setting)
    return None if found is None else (*found, raw.strip())


def _merged_value(field: str, variable: str, raw: str, arg: str) -> object:
    """`raw` read as the setting `field` reads its variable."""
    if field in ("shm_default_byte_size", "shm_growth_byte_size"):
        if not (raw.isascii() and raw.isdigit()) or int(raw) <= 0:
            raise ConfigError(
                f"SAGEMAKER_TRITON_ADDITIONAL_ARGS: {arg!r} must give {variable} a positive "
                "whole number of bytes"
            )
        return int(raw)
    if field == "model_namespacing" and raw.lower() not in ("true", "false", "1", "0"):
        raise ConfigError(
            f"SAGEMAKER_TRITON_ADDITIONAL_ARGS: {arg!r} must be true or false ({variable})"
        )
    return raw


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
    # The Python backend's prefix for its regions in /dev/shm: unique to this serve, so
    # those a crashed Triton leaves are told from any other's (two containers may share
    # the host's /dev/shm) and removed.
    shm_prefix: str = dataclasses.field(
        default_factory=lambda: f"serve_{secrets.token_hex(6)}_python_shm_"
    )

    def shm_regions(self) -> str:
        """A pattern naming, in /dev/shm, the Python backend's regions of this Triton."""
        return f"{self.shm_prefix}*"

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
            f"--backend-config={SHM_PREFIX_SETTING}={self.shm_prefix}",
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
