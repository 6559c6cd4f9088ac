"""Reading and writing `config.pbtxt` with Triton's own model-config schema.

The generated protobuf module ships in the `tritonclient` wheel, so configs
are parsed exactly as Triton parses them (no regular expressions), and a
config that does not parse is reported with its file and line before Triton
ever sees it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TypeAlias

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from serve.errors import ArtifactError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
# Generated protobuf classes carry no type information: Any to the type checker.
ModelConfig: TypeAlias = model_config_pb2.ModelConfig
InstanceKind = model_config_pb2.ModelInstanceGroup.Kind


def read_config(path: Path) -> ModelConfig:
    """Parse one config.pbtxt; `ArtifactError` names the file, line and problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: cannot be read as UTF-8 text: {exc}") from exc
    try:
        return text_format.Parse(text, ModelConfig())
    except text_format.ParseError as exc:
        raise ArtifactError(
            f"{path}:{exc.GetLine()}: not a valid Triton model configuration: {exc}; "
            "fix the file (see Triton's model_config.proto for the fields)"
        ) from exc


def write_config(config: ModelConfig, path: Path) -> None:
    """Write a config atomically, so Triton never reads half a file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text_format.MessageToString(config), encoding="utf-8")
    os.replace(partial, path)


def is_python_backend(config: ModelConfig) -> bool:
    return config.backend == "python"


def instance_count(config: ModelConfig, gpu_count: int) -> int:
    """How many instances Triton will create, as its defaults decide."""
    if not config.instance_group:
        return max(1, gpu_count)
    total = 0
    for group in config.instance_group:
        count = group.count or 1
        if group.kind == InstanceKind.KIND_GPU:
            count *= len(group.gpus) or max(1, gpu_count)
        total += count
    return total


def move_gpu_instances_to_cpu(config: ModelConfig) -> bool:
    """Turn KIND_GPU instance groups into KIND_CPU ones; True if any changed."""
    changed = False
    for group in config.instance_group:
        if group.kind == InstanceKind.KIND_GPU:
            group.kind = InstanceKind.KIND_CPU
            del group.gpus[:]
            changed = True
    return changed


def stateful_models(configs: Mapping[str, ModelConfig]) -> set[str]:
    """The models of `configs` (by name) that reach a sequence: their own, or a step's.

    A request to an ensemble carries its sequence id to every step, so an ensemble
    with a sequence model among its steps (at any depth) reaches that model's
    sequences as surely as a request to the model itself.
    """
    stateful = {name for name, config in configs.items() if config.HasField("sequence_batching")}
    grew = True
    while grew:
        grew = False
        for name, config in configs.items():
            steps = {step.model_name for step in config.ensemble_scheduling.step}
            if name not in stateful and steps & stateful:
                stateful.add(name)
                grew = True
    return stateful
